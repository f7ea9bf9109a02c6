"""Attention rows of a few queries (fused path) against the rows of the explicit path's full
hook_pattern: every layer and head, every small config, the split-input / attn-result switches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit.attention_rows import pattern_row_queries
from hooked_vivit.causal.patching import FrameSlot, Region, resolve_positions
from tests.conftest import SMALL_CONFIGS, make_hf, pixels
from tests.tolerances import fp32_tol

SWITCHES = [
    {},
    {"use_split_qkv_input": True},
    {"use_attn_result": True},
    {"use_split_qkv_input": True, "use_attn_result": True},
]


def with_switches(model: HookedViViT, **switches) -> HookedViViT:
    other = HookedViViT(dataclasses.replace(model.cfg, **switches), init_weights=False)
    other.load_state_dict(model.state_dict())
    return other


def full_patterns(model: HookedViViT, x: torch.Tensor) -> torch.Tensor:
    """[batch, layers, heads, P, P] from the explicit path (caching hook_pattern forces it)."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    with torch.inference_mode():
        _, cache = model.run_with_cache(x, names_filter=names)
    return torch.stack([cache[n] for n in names], dim=1)


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "+".join(s) or "default")
@pytest.mark.parametrize("config", list(SMALL_CONFIGS))
def test_rows_equal_full_pattern_rows(config, switches):
    kw = SMALL_CONFIGS[config]
    model = with_switches(HookedViViT.from_hf_model(make_hf(kw)), **switches)
    x = pixels(kw)
    full = full_patterns(model, x)
    grid = model.cfg.grid
    groups = [
        "cls",
        FrameSlot(grid.n_frame_slots - 1),
        Region(frame_slots=0, rows=[0], cols=[0, 1], include_cls=True),
        [3, 1],
    ]
    for group in groups:
        pos = list(resolve_positions(model, group))
        # The fused path must stay on while the rows are computed.
        assert not any(b.attn.needs_pattern() for b in model.blocks)
        rows = model.attention_rows(x, queries=group)
        assert rows.shape == (x.shape[0], model.cfg.n_layers, model.cfg.n_heads, len(pos), model.cfg.n_ctx)
        expected = full[:, :, :, pos]
        assert (rows - expected).abs().max() <= 1e-6, (config, switches, group)
    # The CLS row is bitwise equal to the explicit path's row (the same arithmetic on one row).
    cls = model.attention_rows(x)
    assert (cls[:, :, :, 0] - full[:, :, :, 0]).abs().max() <= 1e-6


def test_rows_fused_path_is_bitwise_where_explicit(tiny):
    """On the explicit path (cfg.use_sdpa off) the rows are slices of the pattern itself."""
    model, x, _ = tiny
    explicit = with_switches(model, use_sdpa=False)
    assert torch.equal(
        explicit.attention_rows(x, queries=FrameSlot(0))[:, :, :, :],
        full_patterns(explicit, x)[:, :, :, list(resolve_positions(model, FrameSlot(0)))],
    )


def test_rows_are_a_drop_in_for_the_cls_row_of_the_cache(tiny):
    model, x, _ = tiny
    full = full_patterns(model, x)
    rows = model.attention_rows(x, layers=[1, 0])
    assert rows.shape[1] == 2
    for i, l in enumerate([1, 0]):
        torch.testing.assert_close(rows[:, i, :, 0], full[:, l, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows.sum(-1)))


def test_run_with_cache_with_query_rows(tiny):
    model, x, _ = tiny
    full = full_patterns(model, x)
    pos = list(resolve_positions(model, FrameSlot(1)))
    with pattern_row_queries(model, FrameSlot(1)) as got:
        assert list(got) == pos
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern_rows"))
    assert all(b.attn.pattern_row_positions == (0,) for b in model.blocks)  # restored
    for l in range(model.cfg.n_layers):
        torch.testing.assert_close(cache[f"blocks.{l}.attn.hook_pattern_rows"], full[:, l, :, pos], atol=1e-6, rtol=0)
    # Default query set outside the context: the CLS row.
    _, cache = model.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern_rows")
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern_rows"], full[:, 0, :, :1], atol=1e-6, rtol=0)


def test_editing_rows_patches_attention_as_hook_pattern_does(tiny):
    """A hook on the rows changes those queries' attention exactly as the same edit of
    hook_pattern's rows does (fused and explicit path); reading them leaves the logits alone."""
    model, x, _ = tiny
    pos = list(resolve_positions(model, FrameSlot(1)))

    def onehot_rows(rows, hook):  # all attention on token 1
        return torch.zeros_like(rows).index_fill_(-1, torch.tensor([1]), 1.0)

    def onehot_pattern(pattern, hook):
        pattern = pattern.clone()
        pattern[:, :, pos] = 0.0
        pattern[:, :, pos, 1] = 1.0
        return pattern

    with torch.inference_mode():
        plain = model(x)
        read = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_pattern_rows", lambda t, hook: None)])
        reference = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern", onehot_pattern)])
        with pattern_row_queries(model, FrameSlot(1)):
            fused = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern_rows", onehot_rows)])
            explicit = with_switches(model, use_sdpa=False)
            with pattern_row_queries(explicit, FrameSlot(1)):
                slow = explicit.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern_rows", onehot_rows)])
    tol = fp32_tol(plain.abs().max(), model.cfg.d_model)  # float32 logits by other kernels (tests/tolerances.py)
    torch.testing.assert_close(read, plain, atol=tol, rtol=0)
    assert (reference - plain).abs().max() > 10 * tol
    torch.testing.assert_close(fused, reference, atol=tol, rtol=0)
    torch.testing.assert_close(slow, reference, atol=tol, rtol=0)


def test_bad_layers_and_queries(tiny):
    model, x, _ = tiny
    with pytest.raises(ValueError, match="layers must lie in 0..1"):
        model.attention_rows(x, layers=[2])
    with pytest.raises(ValueError, match="layers is empty"):
        model.attention_rows(x, layers=[])
    with pytest.raises(ValueError, match="token position 10000 is out of range"):
        model.attention_rows(x, queries=[10_000])


def test_row_index_is_made_once_not_per_forward(tiny, monkeypatch):
    """The index that writes the rows back is built once per (query positions, device): building it
    from a Python list on a GPU would stall the host once per layer and forward."""
    from hooked_vivit.components import attention

    model, x, _ = tiny
    first = model.attention_rows(x, queries=[3, 1])
    built = []
    real = torch.tensor
    monkeypatch.setattr(attention.torch, "tensor", lambda *a, **k: built.append(a) or real(*a, **k))
    again = model.attention_rows(x, queries=[1, 3])  # the same positions, sorted: the cached index
    assert built == [] and torch.equal(first, again)
    model.attention_rows(x, queries=[2])  # other positions: one new index per layer
    assert built == [((2,),)] * model.cfg.n_layers


def test_row_index_made_under_inference_mode_serves_a_run_with_autograd(tiny):
    """The cached index is first built inside attention_rows' inference_mode; a later run that
    tracks gradients (the explicit path writing the rows back) must still be able to use it."""
    model, x, _ = tiny
    model.attention_rows(x, queries="cls")
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    with pattern_row_queries(model, "cls"):
        _, cache = model.run_with_cache(
            x.requires_grad_(True), names_filter=lambda n: n in names or n.endswith("hook_pattern_rows")
        )
    for l, name in enumerate(names):
        assert torch.equal(cache[f"blocks.{l}.attn.hook_pattern_rows"], cache[name][:, :, :1])
