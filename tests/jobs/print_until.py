"""A job that prints numbered lines at a steady rate until a file appears, then `done`.

For the full-disk tests: it keeps writing while the test fills and frees the state dir's
filesystem, and finishes (exit 0) when the test creates --go.
"""
import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--go", required=True)
    parser.add_argument("--lines-per-s", type=int, default=2000)
    args = parser.parse_args()
    batch = max(1, args.lines_per_s // 50)
    number = 0
    while not os.path.exists(args.go):
        lines = []
        for _ in range(batch):
            number += 1
            lines.append(f"line {number}: {'y' * 100}\n")
        os.write(1, "".join(lines).encode())
        time.sleep(0.02)
    os.write(1, b"done\n")


if __name__ == "__main__":
    main()
