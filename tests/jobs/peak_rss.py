"""Run guardrun's CLI in this process and print its own peak RSS (VmHWM) before exiting.

The flood test needs guardrun's memory, not the job's: ru_maxrss of RUSAGE_SELF counts this
process only (each child has its own).
"""
import resource
import sys

from guardrun.supervisor.cli.main import main

try:
    main(args=sys.argv[1:])
except SystemExit as done:
    code = done.code
else:
    code = 0
print(f"GUARDRUN_PEAK_RSS_KIB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
