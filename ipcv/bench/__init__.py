"""Benchmarks: ``python -m ipcv.bench vision`` (tower latency), ``python -m ipcv.bench knn-memory``."""
