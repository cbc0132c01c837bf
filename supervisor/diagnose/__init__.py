"""Reading the job's output: log lines, the failure patterns, per-rank logs, progress, the
sentinel for hangs and NaN, stack dumps, the root cause.
"""
