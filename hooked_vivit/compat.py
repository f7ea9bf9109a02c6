"""Everything that differs between the TransformerLens generations this library supports (3.9 and 4.x).

The rest of the library imports these names from here and never asks which TransformerLens it runs on.

- ``PatchingResult``: TL 4's per-example patching result; ``None`` on TL 3, whose patching helpers
  return tensors only (no ``reduce=`` / ``baseline=`` keywords either).
- ``HAS_LOGIT_LENS``: ``ActivationCache.logit_lens`` (TL 4 only).
- ``HAS_DIRECT_PATH``: ``transformer_lens.patching.get_act_patch_direct_path`` (TL 4 only).
"""

from __future__ import annotations

import re
from importlib.metadata import version

import torch
from transformer_lens import ActivationCache
from transformer_lens import patching as _tl_patching

TL_VERSION_STRING = version("transformer-lens")
TL_VERSION: tuple[int, int] = tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", TL_VERSION_STRING).groups())  # type: ignore[union-attr,assignment]
TL_MAJOR = TL_VERSION[0]
SUPPORTED = ">=3.9,<5"

if not (3, 9) <= TL_VERSION < (5, 0):
    raise ImportError(f"hooked-vivit supports transformer-lens {SUPPORTED}; found {TL_VERSION_STRING}")

PatchingResult = getattr(_tl_patching, "PatchingResult", None)
HAS_LOGIT_LENS = hasattr(ActivationCache, "logit_lens")
HAS_DIRECT_PATH = hasattr(_tl_patching, "get_act_patch_direct_path")


def in_function_transform() -> bool:
    """True while torch.func (vmap, grad, jacrev, ...) or torch.compile traces the code, where a
    data-dependent Python branch (``if tensor.all():``) cannot run."""
    try:
        if torch.compiler.is_compiling():
            return True
    except AttributeError:  # torch < 2.3
        pass
    from torch._C._functorch import maybe_current_level

    return maybe_current_level() is not None


__all__ = [
    "HAS_DIRECT_PATH",
    "HAS_LOGIT_LENS",
    "PatchingResult",
    "SUPPORTED",
    "TL_MAJOR",
    "TL_VERSION",
    "in_function_transform",
]
