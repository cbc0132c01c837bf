"""`python -m guardrun.supervisor ...` is the `guardrun` command (used by `guardrun start`,
`guardrun tmux` and the systemd units where no console script is on PATH)."""
from .cli import main

main(prog_name="guardrun")
