"""Running without a terminal: `guardrun start` (daemon), the job lock, the control socket,
tmux sessions, a job's run wired for them.
"""
