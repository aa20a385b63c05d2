"""Measurements behind the book's notebooks (``notebooks/``): thin notebooks call these.

Modules, one job each:

- :mod:`~ipcv.analysis.images`   the photographs bundled with scikit-image, patch grids
- :mod:`~ipcv.analysis.encoders` which encoder a notebook runs (offline DINOv2, Qwen2-VL with real
  weights, ...) and how images become its inputs
- :mod:`~ipcv.analysis.hidden`   one unpruned forward with every block's input, one compressed
  forward under :func:`ipcv.trace`
- :mod:`~ipcv.analysis.fidelity` cosine / error / drift measures and the copy and frozen baselines
- :mod:`~ipcv.analysis.bound`    the error bound of the paper's Appendix E
- :mod:`~ipcv.analysis.costs`    FLOPs of the real Qwen2-VL-7B tower (built on the meta device)
- :mod:`~ipcv.analysis.paper`    the paper's tables (``data/paper``) and the benchmark JSON files
- :mod:`~ipcv.analysis.plots`    seaborn figures with labelled axes
- :mod:`~ipcv.analysis.report`   what ran where (weights, device), printing checked numbers

Conventions: a forward pass's tokens are *packed* ``[L, D]`` as in :mod:`ipcv.trace`
(ViT batches ``[B, N, D]`` are flattened image after image); all tensors handed back are float32
on the CPU.
"""
