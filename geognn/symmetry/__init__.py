"""Symmetry tools: frames and frame averaging (frames.py), grids on the sphere (sphere.py) and
measured symmetry errors of any model (report.py)."""
