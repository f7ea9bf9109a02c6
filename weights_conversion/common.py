"""What every architecture's converter shares: key checks, the finiteness check, layout tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the config: lists every missing, unexpected or mis-shaped key."""


def rename_key(key: str, rules) -> str:
    for pattern, repl in rules:
        key = pattern.sub(repl, key)
    return key


def is_hooked_layout(state_dict: StateDict) -> bool:
    return any(k.startswith("blocks.") for k in state_dict)


def checkpoint_has_classifier(state_dict: StateDict) -> bool:
    return any(k.startswith("classifier.") or k.startswith("unembed.") for k in state_dict)


def check_keys(
    found: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    what: str,
    spell: Callable[[str], str] = str,
) -> None:
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key, each as ``spell``
    writes it (the converter passes the checkpoint's own spelling: its layout and prefix)."""
    missing = [spell(k) for k in expected if k not in found]
    unexpected = [spell(k) for k in found if k not in expected]
    misshaped = [
        f"{spell(k)}: checkpoint {found[k]} vs expected {expected[k]}"
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    if missing or unexpected or misshaped:
        parts = [f"{what} does not match the config"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", misshaped),
        ):
            if items:
                shown = items if len(items) <= 20 else items[:20] + [f"... and {len(items) - 20} more"]
                parts.append(f"{title} ({len(items)}):\n  " + "\n  ".join(shown))
        raise CheckpointError("\n".join(parts))


def check_finite(state_dict: StateDict) -> None:
    """Every floating-point tensor finite, else CheckpointError naming each bad tensor (NaN weights
    would otherwise load silently and turn every output to NaN)."""
    bad = []
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is a {type(value).__name__}, expected a tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            n = int((~torch.isfinite(value)).sum())
            bad.append(f"{key} {list(value.shape)}: {n} of {value.numel()} values NaN/Inf")
    if bad:
        raise CheckpointError(
            "checkpoint holds non-finite weights (a corrupt file or a diverged training run):\n  " + "\n  ".join(bad)
        )


def shapes_after_conversion(
    hf_shapes: dict[str, tuple[int, ...]], hf_to_hooked: Callable[[StateDict, Any], StateDict], cfg: Any
) -> dict[str, tuple[int, ...]]:
    """Every hooked parameter and its shape: ``hf_to_hooked`` run on an HF checkpoint of meta tensors
    of ``hf_shapes`` (from the config alone; the model is never built)."""
    with torch.device("meta"):
        hf = {k: torch.empty(shape) for k, shape in hf_shapes.items()}
    return {k: tuple(v.shape) for k, v in hf_to_hooked(hf, cfg).items()}


def activation_shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
    """The learned activation's tensors (``hidden_act="prelu"``: its weight), by name; {} for most."""
    from hooked_vivit.components.mlp import make_activation  # the MLP component owns that list

    with torch.device("meta"):
        act = make_activation(cfg.act_fn)
    return {k: tuple(v.shape) for k, v in act.state_dict().items()} if isinstance(act, torch.nn.Module) else {}


# The MLP and classifier as BERT-style checkpoints (VideoMAE, TimeSformer) name them, per layer prefix p
# ("encoder.layer.{i}.") and hooked block prefix b ("blocks.{i}."). Linear weights are [out, in] there,
# [in, out] here.
def bert_mlp_shapes(cfg: Any, p: str) -> dict[str, tuple[int, ...]]:
    shapes = {
        p + "intermediate.dense.weight": (cfg.d_mlp, cfg.d_model),
        p + "intermediate.dense.bias": (cfg.d_mlp,),
        p + "output.dense.weight": (cfg.d_model, cfg.d_mlp),
        p + "output.dense.bias": (cfg.d_model,),
    }
    shapes.update({p + f"intermediate.intermediate_act_fn.{name}": s for name, s in activation_shapes(cfg).items()})
    return shapes


def _bert_mlp_keys(cfg: Any, p: str, b: str) -> list[tuple[str, str, bool]]:
    """(checkpoint key, hooked key, transposed) for each MLP tensor: one table for both directions."""
    keys = [
        (p + "intermediate.dense.weight", b + "mlp.W_in", True),
        (p + "intermediate.dense.bias", b + "mlp.b_in", False),
        (p + "output.dense.weight", b + "mlp.W_out", True),
        (p + "output.dense.bias", b + "mlp.b_out", False),
    ]
    return keys + [
        (p + f"intermediate.intermediate_act_fn.{n}", b + f"mlp.act.{n}", False) for n in activation_shapes(cfg)
    ]


def bert_mlp_to_hooked(sd: StateDict, cfg: Any, p: str, b: str) -> StateDict:
    return {ours: sd[hf].T if transposed else sd[hf] for hf, ours, transposed in _bert_mlp_keys(cfg, p, b)}


def bert_mlp_to_hf(sd: StateDict, cfg: Any, b: str, p: str) -> StateDict:
    return {hf: sd[ours].T if transposed else sd[ours] for hf, ours, transposed in _bert_mlp_keys(cfg, p, b)}


def classifier_shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
    """A linear head with bias, ``classifier.*``; none for a backbone (n_classes 0)."""
    return (
        {"classifier.weight": (cfg.n_classes, cfg.d_model), "classifier.bias": (cfg.n_classes,)}
        if cfg.n_classes
        else {}
    )
