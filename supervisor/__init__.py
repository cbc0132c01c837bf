"""guardrun.supervisor: how it is watched."""
