"""dipgo's benchmarks: one module per measurement, sharing :mod:`benchmarks.harness`.

Run them from the repository root, against the installed ``dipgo``: ``python -m benchmarks.NAME --help``.
Results are committed under ``benchmarks/results/``.
"""
