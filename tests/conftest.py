"""Fixtures only: the tiny models themselves are made in ``tests/families.py``."""

from __future__ import annotations

import os

import pytest
import torch
from families import FAMILIES, make_tower

import ipcv

torch.set_num_threads(2)

# tests/vllm/ needs vLLM, which lives in its own venv (.venv-vllm: its transformers pin differs from the main
# lock's); `make test` runs that directory there, with IPCV_VLLM_TESTS=1, and the rest here
collect_ignore = [] if os.environ.get("IPCV_VLLM_TESTS") == "1" else ["vllm"]


@pytest.fixture
def tower():
    return make_tower()


@pytest.fixture(params=FAMILIES, ids=str)
def family(request):
    """Each multimodal family of ``families.FAMILIES`` (a test that applies to all of them takes this; one
    that also runs per case parametrizes ``family, case`` itself, ``indirect=["family"]``)."""
    return request.param


@pytest.fixture(scope="session")
def _family_models():
    return {}


@pytest.fixture
def family_model(family, _family_models):
    """``family``'s tiny model, built once per session and restored after every test."""
    if family.name not in _family_models:
        _family_models[family.name] = family.make()
    model = _family_models[family.name]
    yield model
    ipcv.restore(model)
