"""Shared fixtures: small HF ViViT models with EVERY parameter perturbed (HF initialises LayerNorms
to 1 and biases / CLS / position embeddings to 0, which would let a wrong mapping pass). The models
and inputs come from hooked_vivit.testing, which the benchmarks use too."""

from __future__ import annotations

import os

import pytest

from hooked_vivit import HookedViViT
from hooked_vivit.testing import SMALL_CONFIGS, make_hf, max_rel, perturb_, pixels  # noqa: F401  (tests import them from here)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


@pytest.fixture(params=list(SMALL_CONFIGS))
def small_pair(request):
    """(name, config kwargs, perturbed HF eager model, hooked model converted from it)."""
    kw = SMALL_CONFIGS[request.param]
    hf = make_hf(kw)
    return request.param, kw, hf, HookedViViT.from_hf_model(hf)


@pytest.fixture
def tiny():
    """The first small config, converted: for hook and cache tests."""
    kw = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]
    hf = make_hf(kw)
    return HookedViViT.from_hf_model(hf), pixels(kw), kw
