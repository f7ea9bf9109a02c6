"""Routing a hook through an SAE: ``with splice(model, sae, hook, use_error_term=...)``.

Inside the block the hook's output is the SAE's reconstruction (without the error term), or the
activation itself plus any change made to the SAE's features (with it: the forward is exactly the
unspliced one until a feature hook edits something). The SAE's hook points join the model's
``hook_dict`` as ``<hook>.hook_sae_input``, ``.hook_sae_acts_pre``, ``.hook_sae_acts_post``
(the feature activations), ``.hook_sae_recons``, ``.hook_sae_error`` and ``.hook_sae_output``, so
``run_with_cache``, ``run_with_hooks`` and the patching helpers reach them as any other hook.
Hooks added on ``<hook>`` itself see the spliced value. Leaving the block restores the model.

The SAE reads hook_z-like activations ([batch, pos, heads, d_head]) flattened, as it was trained.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_output")


class _Splice(nn.Module):
    """The SAE's hook points plus an error hook, run from a forward hook on the model's HookPoint.
    The SAE itself is held outside the module tree, so the model's parameters stay the model's."""

    def __init__(self, sae: Any, use_error_term: bool):
        super().__init__()
        object.__setattr__(self, "sae", sae)
        self.use_error_term = use_error_term
        self.hook_sae_error = HookPoint()

    def points(self) -> dict[str, HookPoint]:
        out = {name: getattr(self.sae, name) for name in SAE_HOOKS}
        out["hook_sae_error"] = self.hook_sae_error
        return out

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        from sae_lens.saes.sae import _disable_hooks

        shape, dtype = act.shape, act.dtype
        x = act.flatten(2) if act.ndim > 3 else act
        sae = self.sae
        out = sae.hook_sae_output(sae.decode(sae.encode(x)))
        if self.use_error_term:
            with torch.no_grad(), _disable_hooks(sae):
                clean = sae.decode(sae.encode(x))  # the same arithmetic without hooks: what no edit changes
            error = self.hook_sae_error(x.to(clean.dtype) - clean)
            # x + (edited - clean) + (edited error - error): exactly x when no hook edits anything.
            out = x.to(out.dtype) + (out - clean) + (error - (x.to(clean.dtype) - clean))
        return out.to(dtype).reshape(shape)


def _hook_point(model: HookedVideoTransformer, hook: str) -> HookPoint:
    if hook not in model.hook_dict:
        model.check_hook_names([hook])
    return model.hook_dict[hook]


def _check_width(model: HookedVideoTransformer, sae: Any, hook: str) -> None:
    from hooked_vivit.sae.activations import hook_d_in

    d_in = hook_d_in(model, hook)
    if sae.cfg.d_in != d_in:
        raise ValueError(
            f"the SAE reads {sae.cfg.d_in}-wide activations, {hook} gives {d_in} per token: "
            "an SAE trained on another hook or model?"
        )


# model -> (its tensors' identities and versions, their fingerprint): a splice per batch hashes the weights once.
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(model: HookedVideoTransformer) -> str:
    from hooked_vivit.loading import weights_fingerprint

    try:  # any in-place edit bumps a tensor's version; .to() / load_state_dict make new tensors or bump it
        key = tuple((id(t), t._version) for t in [*model.parameters(), *model.buffers()])
    except RuntimeError:  # inference tensors keep no version counter: no memo
        return weights_fingerprint(model)
    memo = _FINGERPRINTS.get(model)
    if memo is None or memo[0] != key:
        memo = _FINGERPRINTS[model] = (key, weights_fingerprint(model))
    return memo[1]


def _check_provenance(model: HookedVideoTransformer, sae: Any, hook: str) -> None:
    """The hook and the model weights the SAE records (``sae.cfg.metadata``: ``hook_name``, and
    ``weights_fingerprint``, which load_sae reads from provenance.json) must be this splice's."""
    metadata = getattr(getattr(sae, "cfg", None), "metadata", None)
    if metadata is None:
        return
    trained_on = metadata.get("hook_name")
    if trained_on and trained_on != hook:
        raise ValueError(
            f"this SAE was trained on {trained_on!r} (sae.cfg.metadata.hook_name), not {hook!r}: splice it at "
            f"{trained_on!r}, or pass strict=False to splice it elsewhere on purpose"
        )
    recorded = metadata.get("weights_fingerprint")
    if isinstance(recorded, str):  # a sha256 hex; an older record (a float) is another scheme, not comparable
        current = _fingerprint(model)
        if current != recorded:
            raise ValueError(
                f"this SAE was trained on a model whose weights have the fingerprint {recorded[:16]}..., and this "
                f"{type(model).__name__}'s is {current[:16]}... (hooked_vivit.loading.weights_fingerprint): another "
                "model, or other weights (also: the same ones processed differently, fold_ln / center_writing_weights). "
                "Load the model the SAE was trained on, or pass strict=False to splice it anyway"
            )


@contextmanager
def splice(
    model: HookedVideoTransformer, sae: Any, hook: str, *, use_error_term: bool = False, strict: bool = True
) -> Iterator[Any]:
    """Route ``hook`` through ``sae`` inside the block; yields the model. The SAE's width must be the
    hook's; with ``strict`` (the default) the hook and model weights it records must be these too."""
    point = _hook_point(model, hook)
    _check_width(model, sae, hook)
    if strict:
        _check_provenance(model, sae, hook)
    if any(name.startswith(hook + ".hook_sae_") for name in model.hook_dict):
        raise ValueError(f"{hook} is already spliced; nest splices on different hooks only")
    sae = sae.to(model.W_E.device)
    spliced = _Splice(sae, use_error_term)
    handle = point.register_forward_hook(lambda module, inputs, output: spliced(output))
    names = {}
    for leaf, hp in spliced.points().items():
        name = f"{hook}.{leaf}"
        hp.name = name
        model.hook_dict[name] = hp
        model.mod_dict[name] = hp
        names[name] = hp
    try:
        yield model
    finally:
        handle.remove()
        for name, hp in names.items():
            hp.remove_hooks("both", including_permanent=True)
            model.hook_dict.pop(name, None)
            model.mod_dict.pop(name, None)


def feature_acts(
    model: HookedVideoTransformer, sae: Any, hook: str, pixel_values: torch.Tensor, *, use_error_term: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, feature activations [batch, n_ctx, d_sae]) of a spliced run (default: with the
    error term, so the logits are the model's own)."""
    name = f"{hook}.hook_sae_acts_post"
    with splice(model, sae, hook, use_error_term=use_error_term), torch.inference_mode():
        logits, cache = model.run_with_cache(pixel_values, names_filter=[name])
    return logits, cache[name]
