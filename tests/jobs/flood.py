"""A job that floods its output: one 10 MB line, then N short lines as fast as it can."""
import sys

lines = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
out = sys.stdout.buffer
out.write(b"x" * 10_000_000 + b"\n")
chunk = []
for i in range(lines):
    chunk.append(b"flood line %d: nothing to see here\n" % i)
    if len(chunk) == 1000:
        out.write(b"".join(chunk))
        chunk.clear()
out.write(b"".join(chunk) + b"flood done\n")
out.flush()
