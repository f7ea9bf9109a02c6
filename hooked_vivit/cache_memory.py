"""How many bytes a run_with_cache will hold, before running it, and a readable cache summary.

A full ViViT-B cache with attention patterns and scores is about 11 GB per clip: the two
[12 heads x 3137 x 3137] maps of each of 12 layers dominate everything else.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from transformer_lens import ActivationCache


def hook_shape(cfg: Any, name: str, batch: int) -> tuple[int, ...] | None:
    """The shape a hook fires with, or None if it does not fire under this config."""
    B, P, d, H, E, M = batch, cfg.n_ctx, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("hook_attn_scores", "hook_pattern"):
        return (B, H, P, P)
    if leaf == "hook_pattern_rows":  # the default query set: the CLS row
        return (B, H, 1, P)
    if leaf in ("hook_q", "hook_k", "hook_v", "hook_z"):
        return (B, P, H, E)
    if leaf == "hook_result":
        return (B, P, H, d) if cfg.use_attn_result else None
    if leaf in ("hook_q_input", "hook_k_input", "hook_v_input"):
        return (B, P, H, d) if cfg.use_split_qkv_input else None
    if leaf == "hook_attn_in":
        return (B, P, H, d) if cfg.use_attn_in and not cfg.use_split_qkv_input else None
    if leaf == "hook_mlp_in":
        return (B, P, d) if cfg.use_hook_mlp_in else None
    if leaf in ("hook_pre", "hook_post"):
        return (B, P, M)
    if leaf == "hook_scale":
        per_head = cfg.use_split_qkv_input or cfg.use_attn_in
        return (B, P, H, 1) if per_head and ".ln1." in name else (B, P, 1)
    if leaf == "hook_normalized" and ".ln1." in name and (cfg.use_split_qkv_input or cfg.use_attn_in):
        return (B, P, H, d)
    return (B, P, d)


def _filter(names_filter: Any) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda n: True
    if isinstance(names_filter, str):
        return lambda n: n == names_filter
    if isinstance(names_filter, (list, tuple, set)):
        wanted = set(names_filter)
        return lambda n: n in wanted
    return names_filter


def estimate_cache_bytes(model: Any, names_filter: Any = None, batch: int = 1, dtype: torch.dtype | None = None) -> int:
    keep = _filter(names_filter)
    elem = torch.finfo(dtype or model.cfg.dtype).bits // 8
    total = 0
    for name in model.hook_dict:
        if keep(name):
            shape = hook_shape(model.cfg, name, batch)
            if shape is not None:
                n = 1
                for s in shape:
                    n *= s
                total += n * elem
    return total


def free_bytes(device: torch.device | str) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def without_maps(name: str) -> bool:
    """A names_filter that skips the attention patterns and scores (the bulk of a cache)."""
    return not name.endswith(("hook_pattern", "hook_attn_scores"))


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class VideoActivationCache(ActivationCache):
    """TransformerLens's ActivationCache with a summary for a repr: hooks, shapes, bytes."""

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.cache_dict.values())

    def summary(self, max_rows: int = 12) -> str:
        groups: dict[str, list] = {}
        for name, v in self.cache_dict.items():
            key = name.split(".", 2)[-1] if name.startswith("blocks.") else name
            g = groups.setdefault(key, [0, tuple(v.shape), 0])
            g[0] += 1
            g[2] += v.numel() * v.element_size()
        rows = sorted(groups.items(), key=lambda kv: -kv[1][2])
        lines = [f"VideoActivationCache: {len(self.cache_dict)} hooks, {_gb(self.nbytes())}" + ("" if self.has_batch_dim else ", batch dim removed")]
        for key, (count, shape, nbytes) in rows[:max_rows]:
            lines.append(f"  {key:<28} x{count:<3} {str(list(shape)):<26} {_gb(nbytes)}")
        if len(rows) > max_rows:
            lines.append(f"  ... {len(rows) - max_rows} more kinds")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()
