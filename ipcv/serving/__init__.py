"""Serving engines: ipcv's vision-side methods inside vLLM (``pip install "ipcv[vllm]"``; README: Serving with vLLM).

The switch is one environment variable, :data:`ENV` (``IPCV_METHOD``), holding an ipcv method string
(``IPCV:0.35``, ``IPCV:0.35:prune_layer=4``, ``ToMe:0.5``, ``none``). vLLM loads the plugin
(:mod:`ipcv.serving.vllm_plugin`, entry point group ``vllm.general_plugins``) in every one of its processes; the
variable is read there, so the same setting reaches ``vllm serve``, ``vllm.LLM(...)`` and lmms-eval's ``vllm``
backend without any change to their arguments, and a bad string stops vLLM in its front-end process before an
engine starts, with the error of :func:`ipcv.method_strings.parse_method`.

This module knows no vLLM: it turns the variable into settings and says what a serving engine cannot take:

- LLM-side methods (DART, FastV, V2Drop, SparseVLM): they drop tokens inside the language model's prefill, after
  vLLM's scheduler has fixed each request's token count and paged KV-cache blocks; refused.
- ``output="reduced"`` (ToMe / ToFu / DARTViT handing on fewer tokens): vLLM's multimodal processor fixes the
  number of placeholder tokens (and the mRoPE positions) of every image before scheduling; refused. The
  length-preserving modes (IPCV, and the baselines' default ``output="full"``) keep every visual token, so the
  scheduler, the placeholders, mRoPE and the KV cache are untouched: only the encoder computes less.
- ``scope="global"``: one budget over all patches of an encoder call. vLLM batches the images of several requests
  into one call, so a request's answer would depend on which other requests shared its batch; refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..method_strings import parse_method

ENV = "IPCV_METHOD"
"""The environment variable that turns the plugin on: an ipcv vision-side method string, or ``none`` / unset."""

STATS_ENV = "IPCV_VLLM_STATS"
"""If set, a file each vLLM worker appends one JSON line to per encoder call: the method, the patches of each
image / video frame, and how many of them the last block computed (the kept tokens)."""

SERVED = ("IPCV", "ToMe", "ToFu", "DARTViT")
"""Methods the plugin runs: every vision-side method, in its length-preserving mode."""


def serving_method(text: str | None):
    """The vision-side settings ``text`` names, or None for ``none`` / empty / None. ValueError, naming
    :data:`ENV`, for a string ipcv does not parse or a setting a serving engine cannot take (module docstring)."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    try:
        settings = parse_method(text, "vision")
    except ValueError as err:
        try:
            language = parse_method(text, "language")
        except ValueError:
            raise ValueError(f"{ENV}={text!r}: {err}") from None
        raise ValueError(
            f"{ENV}={text!r}: {type(language).__name__} is an LLM-side method (it drops tokens inside the language "
            "model's prefill); in vLLM the scheduler has fixed every request's token count and KV-cache blocks "
            f"before prefill, so the ipcv plugin runs vision-side methods only: {', '.join(SERVED)} (or none)"
        ) from None
    if getattr(settings, "reduces_output", False):
        raise ValueError(
            f"{ENV}={text!r}: output='reduced' hands the language model fewer visual tokens, but vLLM's "
            "multimodal processor fixes each image's placeholder count (and mRoPE positions) before scheduling; "
            "use output=full (the default): every token comes back, only the encoder computes less"
        )
    if getattr(settings, "scope", "segment") == "global":
        raise ValueError(
            f"{ENV}={text!r}: scope='global' puts one budget over all patches of an encoder call; vLLM batches "
            "the images of several requests into one call, so a request's answer would depend on the others in "
            "its batch; use scope=segment (the default: every image / frame keeps its own share)"
        )
    return settings


def method_from_env(environ: Mapping[str, str] | None = None):
    """:func:`serving_method` of :data:`ENV` in ``environ`` (default ``os.environ``)."""
    return serving_method((os.environ if environ is None else environ).get(ENV))
