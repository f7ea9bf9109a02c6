"""MLP block: d_model -> d_mlp -> act -> d_model, with hook_pre and hook_post."""

from __future__ import annotations

from collections.abc import Callable

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


def make_activation(name: str, dtype: torch.dtype | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``hidden_act`` -> the function. The common ones are fused torch ops; any other name that
    transformers' ACT2FN knows is transformers' own module (exact by construction), built as
    transformers builds it for a model of ``dtype`` (under that default dtype). A module with
    tensors (``prelu``, ``xielu``) becomes a submodule of the MLP, so its weights load and save."""
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    from transformers.activations import ACT2CLS, ACT2FN

    if name not in ACT2CLS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(set(ACTIVATIONS) | set(ACT2CLS))}")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        return ACT2FN[name]
    finally:
        torch.set_default_dtype(previous)


class MLP(nn.Module):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        assert cfg.d_mlp is not None
        # An nn.Module is registered (its tensors, e.g. PReLU's weight, are "act.*"); a function is not.
        self.act = make_activation(cfg.act_fn, cfg.dtype)
        # Tensors the activation keeps in its own dtype whatever the model's: transformers' xIELU holds
        # its parameters in bfloat16, through from_pretrained(dtype=...) too. They keep that dtype
        # (or a loaded checkpoint's) through .to(dtype) here, so the model computes what transformers does.
        self._pinned_dtypes = {
            n: t.dtype for n, t in self._act_tensors() if t.dtype != cfg.dtype and t.is_floating_point()
        }
        self.W_in: Float[torch.Tensor, "d_model d_mlp"] = nn.Parameter(
            torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype)
        )
        self.b_in: Float[torch.Tensor, " d_mlp"] = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.W_out: Float[torch.Tensor, "d_mlp d_model"] = nn.Parameter(
            torch.empty(cfg.d_mlp, cfg.d_model, dtype=cfg.dtype)
        )
        self.b_out: Float[torch.Tensor, " d_model"] = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def _act_tensors(self):
        if isinstance(self.act, nn.Module):
            yield from self.act.named_parameters()
            yield from self.act.named_buffers()

    def _set_act_tensor(self, name: str, value: torch.Tensor) -> None:
        if name in self.act._parameters:
            self.act._parameters[name] = nn.Parameter(value, requires_grad=self.act._parameters[name].requires_grad)
        else:
            self.act._buffers[name] = value

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        for name, t in self._act_tensors():  # device moves apply; dtype casts do not touch pinned tensors
            if name in self._pinned_dtypes and t.dtype != self._pinned_dtypes[name]:
                self._set_act_tensor(name, t.detach().to(self._pinned_dtypes[name]))
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, t in self._act_tensors():  # a pinned tensor takes the checkpoint's dtype
            incoming = state_dict.get(f"{prefix}act.{name}")
            if name in self._pinned_dtypes and incoming is not None and incoming.dtype != t.dtype:
                self._pinned_dtypes[name] = incoming.dtype
                self._set_act_tensor(name, t.detach().to(incoming.dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        pre = self.hook_pre(torch.addmm(self.b_in, x.flatten(0, -2), self.W_in).view(*x.shape[:-1], -1))
        post = self.act(pre)
        if post.dtype != pre.dtype:  # pinned bfloat16 parameters promote a float32 input's output
            post = post.to(pre.dtype)
        post = self.hook_post(post)
        return torch.addmm(self.b_out, post.flatten(0, -2), self.W_out).view(*x.shape[:-1], -1)
