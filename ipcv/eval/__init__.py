"""Accuracy and latency on the paper's benchmarks through lmms-eval (the eval extra: in a clone,
``pip install -e ".[eval]"``).

- :mod:`ipcv.eval.plugin` / :mod:`ipcv.eval.harness`: ``lmms-eval --model ipcv_qwen2_vl`` with
  ``vision=`` / ``language=`` method strings (:mod:`ipcv.method_strings`) and per-call measurements
  (:mod:`ipcv.measure`);
- ``python -m ipcv.eval``: the paper's tables as named sweeps (:mod:`ipcv.eval.sweeps`) appended to a
  resumable results store (:mod:`ipcv.eval.store`).

This package imports lmms-eval only in ``harness`` (loaded by the harness itself).
"""
