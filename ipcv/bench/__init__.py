"""Benchmarks, ``python -m ipcv.bench {vision,knn-memory,prefill,efficiency,gpu}`` (:mod:`ipcv.bench.__main__`):
the real architectures at their real sizes with random weights (latency and FLOPs do not depend on weight
values), results written to ``data/bench/*.json`` with the device they ran on."""
