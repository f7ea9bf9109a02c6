"""MLP block: d_model -> d_mlp -> act -> d_model, with hook_pre and hook_post."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from hooked_vivit.config import HookedViViTConfig


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # HF's gelu_fast / gelu_new / gelu_pytorch_tanh are all this formula; torch fuses it.
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_fast": _gelu_tanh,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "quick_gelu": _quick_gelu,
}


class MLP(nn.Module):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        if cfg.act_fn not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {cfg.act_fn!r}; supported: {sorted(ACTIVATIONS)}")
        assert cfg.d_mlp is not None
        self.act = ACTIVATIONS[cfg.act_fn]
        self.W_in: Float[torch.Tensor, "d_model d_mlp"] = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.b_in: Float[torch.Tensor, "d_mlp"] = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.W_out: Float[torch.Tensor, "d_mlp d_model"] = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.b_out: Float[torch.Tensor, "d_model"] = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        pre = self.hook_pre(torch.addmm(self.b_in, x.flatten(0, -2), self.W_in).view(*x.shape[:-1], -1))
        post = self.hook_post(self.act(pre))
        return torch.addmm(self.b_out, post.flatten(0, -2), self.W_out).view(*x.shape[:-1], -1)
