"""Measurements behind the book's notebooks (``notebooks/``): thin notebooks call these; what presents the
results (closing paragraphs, status page, figures) is :mod:`ipcv.book`.

Modules, one job each:

- :mod:`~ipcv.analysis.images`      the photographs bundled with scikit-image, patch grids
- :mod:`~ipcv.analysis.encoders`    which encoder a notebook runs (offline DINOv2, Qwen2-VL with real
  weights, ...), how images become its inputs, and what its weights are (checked by :mod:`~ipcv.analysis.weights`)
- :mod:`~ipcv.analysis.weights`     are the weights trained? (norm / LayerScale layers against their init)
- :mod:`~ipcv.analysis.hidden`      one unpruned forward with every block's input, one compressed
  forward under :func:`ipcv.trace`, any vision-side method's output
- :mod:`~ipcv.analysis.fidelity`    cosine / error / drift measures, the copy and frozen baselines, per image
- :mod:`~ipcv.analysis.bound`       the error bound of the paper's Appendix E
- :mod:`~ipcv.analysis.deepstack`   each Qwen3-VL DeepStack feature of a compressed tower against the unpruned one
- :mod:`~ipcv.analysis.pruning`     kept masks, budgets, saliency shares
- :mod:`~ipcv.analysis.flop_tables` FLOP tables of the real Qwen2-VL-7B tower (built on the meta device)
- :mod:`~ipcv.analysis.verdicts`    paired tests over images with a threshold and a bootstrap interval

Conventions: a forward pass's tokens are *packed* ``[L, D]`` as in :mod:`ipcv.trace`
(ViT batches ``[B, N, D]`` are flattened image after image); all tensors handed back are float32
on the CPU.
"""
