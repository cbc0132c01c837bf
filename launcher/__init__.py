"""guardrun.launcher: what to run."""
