"""The extraction benchmark behind ``animefaces bench`` and benchmarks/bench_extract.py:
the harness (harness), its measuring helpers (measure) and its tables (results).
"""
