"""`python -m guardrun ...` is the `guardrun` command (guardrun/supervisor/__main__.py)."""
import runpy

runpy.run_module("guardrun.supervisor", run_name="__main__")
