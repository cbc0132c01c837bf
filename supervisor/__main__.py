"""`python -m guardrun.supervisor ...` is the `guardrun` command (used by `guardrun start`,
`guardrun tmux` and the systemd units where no console script is on PATH)."""
from .core.signals import install_early

install_early()  # before the ~200 ms of imports cli brings (issue 12 §6); other commands give them back

from .cli.main import main  # noqa: E402

main(prog_name="guardrun")
