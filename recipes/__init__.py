"""The ready recipes and the demo trainer, installed with guardrun as `guardrun.recipes`
(package data: `pip install .` copies this folder). `guardrun example` lists them and prints
one with its paths made to work from wherever the copy is written (supervisor/cli/example.py).
Nothing is imported here."""
