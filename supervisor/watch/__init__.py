"""Looking at the machine: the job's process tree, host memory, GPUs, cgroups (containment),
checkpoints appearing, leftovers of a dead supervisor. Measures; does not decide.
"""
