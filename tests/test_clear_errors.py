"""Clear errors for quiet failures: hook patterns, ambiguous position arrays, integer weights,
non-integer config sizes, and finite inputs whose logits overflow."""

from __future__ import annotations

import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit.model import HookNameError
from tests.conftest import SMALL_CONFIGS, make_hf, pixels

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


# ------------------------------------------------------------------------------------------ positions
def test_an_integer_zero_one_array_and_repeated_indices_are_refused(model):
    import numpy as np

    from hooked_vivit.positions import Region, resolve_positions

    n, grid = model.cfg.n_ctx, model.cfg.grid
    as_ints = torch.zeros(n, dtype=torch.long)
    as_ints[[3, 7]] = 1
    for ambiguous in (as_ints, as_ints.numpy(), as_ints.tolist()):
        with pytest.raises(ValueError) as e:
            resolve_positions(model, ambiguous)
        assert str(e.value) == (
            "token positions: an integer array of length 49 holding only 0 and 1 is ambiguous (a mask over the 49 "
            "token positions, or the indices 0 and 1?); pass a bool mask (x.bool()) or unique indices"
        )
    assert resolve_positions(model, as_ints.bool()) == (3, 7)
    with pytest.raises(ValueError, match=r"rows: an integer array of length 4 holding only 0 and 1 is ambiguous"):
        resolve_positions(model, Region(rows=torch.tensor([0, 1, 1, 0])))
    on_grid = torch.zeros(grid.shape, dtype=torch.long)
    on_grid[0, 1, 2] = 1
    with pytest.raises(ValueError, match=r"an integer array of the token grid's shape \(2, 4, 6\).*must be bool"):
        resolve_positions(model, on_grid)
    assert resolve_positions(model, on_grid.bool()) == (grid.index(0, 1, 2),)
    # Repeated indices are refused, not silently merged.
    with pytest.raises(ValueError) as e:
        resolve_positions(model, [5, 5, 2])
    assert str(e.value) == (
        "token positions must be unique indices: [5] appears more than once in [5, 5, 2] "
        "(a mask? pass a bool mask of length 49)"
    )
    with pytest.raises(ValueError, match=r"rows must be unique indices: \[1\] appears more than once"):
        resolve_positions(model, Region(rows=[1, 1]))
    # Unique indices, in any order and type, are what they say (two 0/1 indices of a two-long axis too).
    assert resolve_positions(model, np.array([9, 3, 4])) == (3, 4, 9)
    assert resolve_positions(model, Region(frame_slots=[0, 1], rows=[0], cols=[0])) == (
        grid.index(0, 0, 0),
        grid.index(1, 0, 0),
    )


# ------------------------------------------------------------------------------------------ integer weights
def test_integer_weights_are_refused_naming_each_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = make_hf(KW)
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    state["vivit.layers.0.attention.q_proj.weight"] = (
        (state["vivit.layers.0.attention.q_proj.weight"] * 100).round().long()
    )
    with pytest.raises(ValueError) as e:
        HookedViViT.from_state_dict(state, hf.config.to_dict())
    assert str(e.value).startswith(
        "the checkpoint stores 1 tensor(s) as integers, where every HookedViViT weight is floating point: "
        "vivit.layers.0.attention.q_proj.weight (int64). A quantised or corrupted checkpoint?"
    )
    # From disk too (a saved checkpoint with an int8 classifier bias).
    HookedViViT.from_hf_model(hf).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    on_disk = load_file(weights)
    on_disk["classifier.bias"] = on_disk["classifier.bias"].to(torch.int8)
    save_file(on_disk, weights)
    with pytest.raises(ValueError, match=r"1 tensor\(s\) as integers.*: classifier.bias \(int8\)"):
        HookedViViT.from_pretrained(tmp_path / "m")


# ------------------------------------------------------------------------------------------ config sizes
def test_a_non_integer_size_in_a_config_is_refused_naming_the_field():
    import transformers

    from hooked_vivit.config import HookedViViTConfig
    from hooked_vivit.videomae import HookedVideoMAEConfig

    base = transformers.VivitConfig(**KW).to_dict()
    with pytest.raises(ValueError) as e:
        HookedViViTConfig.from_hf_config({**base, "hidden_size": 24.5})
    assert str(e.value) == (
        "ViViT config field 'hidden_size' must be an integer, got 24.5 (float 24.5); sizes are whole numbers "
        "(transformers builds its layers from them)"
    )
    with pytest.raises(ValueError, match=r"'tubelet_size' must be a list of integers, got \[2, 8.5, 8\]"):
        HookedViViTConfig.from_hf_config({**base, "tubelet_size": [2, 8.5, 8]})
    with pytest.raises(ValueError, match=r"VideoMAE config field 'num_frames' must be an integer, got '16'"):
        HookedVideoMAEConfig.from_hf_config({**transformers.VideoMAEConfig().to_dict(), "num_frames": "16"})
    assert HookedViViTConfig.from_hf_config(base).d_model == 24


# ------------------------------------------------------------------------------------------ non-finite logits
def test_finite_input_with_non_finite_logits_raises_naming_where_it_went_non_finite(model):
    x = pixels(KW)
    x[0, 0, 0, 0, 0] = 3e38  # finite, passes validate_input; its token's LayerNorm overflows
    with pytest.raises(FloatingPointError) as e:
        model(x)
    assert str(e.value) == (
        "the model's output holds 7 NaN/Inf values of 14 although its input is finite (largest |input| 3e+38); the "
        "activations first go non-finite at 'blocks.0.ln1.hook_scale'. Values beyond float32's range (3.4e+38) "
        "overflow: preprocessed pixels lie in [-3, 1] (hooked_vivit.video.preprocess); or the weights or a hook "
        "produce NaN/Inf there"
    )
    with pytest.raises(FloatingPointError, match="7 NaN/Inf values of 14"):
        model(x, return_type="both", labels=0)
    # A stopped run returns the residual stream as it is; the usual run costs one isfinite over the logits.
    assert not torch.isfinite(model(x, stop_at_layer=1)).all()
    assert torch.isfinite(model(pixels(KW))).all()


def test_a_hook_that_writes_inf_is_located_on_any_architecture():
    from hooked_vivit import HookedVJEPA2
    from tests import test_vjepa2 as tv

    kw = tv.CONFIGS["dhead10_ratio3"]
    vjepa2 = HookedVJEPA2.from_hf_model(tv.make_hf(kw))  # its own forward, the same check

    def blow_up(act, hook):
        return act * float("inf")

    with pytest.raises(FloatingPointError, match=r"first go non-finite at 'blocks.1.hook_mlp_out'"):
        vjepa2.run_with_hooks(tv.pixels(kw), fwd_hooks=[("blocks.1.hook_mlp_out", blow_up)])
    assert torch.isfinite(vjepa2(tv.pixels(kw))).all()
