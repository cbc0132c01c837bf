"""The leaves every layer may use: the clock, signal handling, the job's states. Imports
nothing of supervisor/.
"""
