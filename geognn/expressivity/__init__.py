"""Expressivity: the geometric Weisfeiler-Leman test (gwl.py), a library of hard pairs (pairs.py),
learned-model probes (models.py) and the ``geognn expressivity`` report (report.py)."""
