"""guardrun: a supervisor for deep-learning training jobs (guardrun.launcher: the recipe and
what to launch; guardrun.supervisor: how it is watched). Nothing is imported here."""
