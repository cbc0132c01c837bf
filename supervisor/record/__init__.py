"""What guardrun writes down and shows: the state dir, the journal and its readers, the
console, systemd notifications, each attempt's output.log. Never fails the job: its own I/O
errors are counted and said.
"""
