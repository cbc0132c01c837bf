"""The commands: what the user types and reads (run, plan, status, logs, stop, report, doctor,
...).
"""
