"""Outputs of ``python -m harness load``, one module per format: console (the tables printed),
json (the whole run), csv (one row of scalar metrics per benchmark) and compare (two runs
side by side)."""
