"""Clear errors for quiet failures: hook patterns, ambiguous position arrays, integer weights,
non-integer config sizes, and finite inputs whose logits overflow."""

from __future__ import annotations

import pytest

from hooked_vivit import HookedViViT
from hooked_vivit.model import HookNameError
from tests.conftest import SMALL_CONFIGS, make_hf

KW = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]


@pytest.fixture(scope="module")
def model():
    return HookedViViT.from_hf_model(make_hf(KW))


# ------------------------------------------------------------------------------------------ hook patterns
def test_a_hook_pattern_skips_hooks_that_cannot_fire_or_hold_no_token_rows(model):
    from hooked_vivit.extract import resolve_hooks

    assert not model.cfg.use_attn_result
    got = resolve_hooks(model, "blocks.0.*")
    assert got == [
        "blocks.0.ln1.hook_scale",
        "blocks.0.ln1.hook_normalized",
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_v",
        "blocks.0.attn.hook_z",
        "blocks.0.ln2.hook_scale",
        "blocks.0.ln2.hook_normalized",
        "blocks.0.mlp.hook_pre",
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
    ]
    # Named explicitly, a hook that cannot fire still raises, naming the switch.
    with pytest.raises(HookNameError, match=r"'blocks.0.attn.hook_result' cannot fire: cfg.use_attn_result is off"):
        resolve_hooks(model, "blocks.0.attn.hook_result")
    # A pattern that keeps nothing says why.
    with pytest.raises(ValueError, match=r"matches 2 hooks, none of which extract can store: 2 cannot fire"):
        resolve_hooks(model, "blocks.*.attn.hook_result")
    with pytest.raises(
        ValueError, match=r"2 have no token axis \(e.g. blocks.0.attn.hook_pattern, shape \[1, 3, 49, 49\]\)"
    ):
        resolve_hooks(model, "blocks.*.attn.hook_pattern")
