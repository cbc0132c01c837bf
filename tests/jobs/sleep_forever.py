"""A job that prints one line and then waits forever in a function a stack dump can name."""
import time

print("working", flush=True)


def wait_forever():
    while True:
        time.sleep(60)


wait_forever()
