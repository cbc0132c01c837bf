"""`guardrun report`: a finished or running job's journal as data, an HTML page and a memory
plot.
"""
