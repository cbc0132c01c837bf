"""One job's run: the loop (states, attempts, backoff), one attempt's watch, the pure policy
that judges readings and endings, checkpoint preparation before a relaunch.
"""
