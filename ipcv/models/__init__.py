"""Model families: one adapter module each (``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``, ``internvl``, ``llava``,
``vit``), the only code that knows transformers internals, and :mod:`~ipcv.models.registry`, which says which adapter
handles a model. Trained weights for the offline book are in :mod:`ipcv.assets`."""
