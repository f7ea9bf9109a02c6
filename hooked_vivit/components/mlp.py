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


# transformers keeps XIELUActivation's parameters in bfloat16 whatever the model's dtype (and through
# from_pretrained(dtype=...)); this library casts every parameter with the model, so it could not
# compute what transformers computes.
UNSUPPORTED_ACTIVATIONS = {"xielu": "transformers keeps its parameters in bfloat16 whatever the model dtype"}


def make_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``hidden_act`` -> the function. The common ones are fused torch ops; any other name that
    transformers' ACT2FN knows is transformers' own module (exact by construction). A module with
    parameters (``prelu``) becomes a submodule of the MLP, so its weights load and save."""
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    from transformers.activations import ACT2CLS, ACT2FN

    if name in UNSUPPORTED_ACTIVATIONS or name not in ACT2CLS:
        why = f" ({UNSUPPORTED_ACTIVATIONS[name]})" if name in UNSUPPORTED_ACTIVATIONS else ""
        supported = sorted((set(ACTIVATIONS) | set(ACT2CLS)) - set(UNSUPPORTED_ACTIVATIONS))
        raise ValueError(f"unsupported activation {name!r}{why}; supported: {supported}")
    return ACT2FN[name]


class MLP(nn.Module):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        assert cfg.d_mlp is not None
        act = make_activation(cfg.act_fn)
        # An nn.Module is registered (its parameters, e.g. PReLU's weight, are "act.*"); a function is not.
        self.act = act.to(dtype=cfg.dtype) if isinstance(act, nn.Module) else act
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
