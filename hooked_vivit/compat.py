"""Everything that differs between the TransformerLens generations this library supports (3.9 and 4.x).

The rest of the library imports these names from here and never asks which TransformerLens it runs on.

- ``PatchingResult``: TL 4's per-example patching result; ``None`` on TL 3, whose patching helpers
  return tensors only (no ``reduce=`` / ``baseline=`` keywords either).
- ``HAS_LOGIT_LENS``: ``ActivationCache.logit_lens`` (TL 4 only).
- ``HAS_DIRECT_PATH``: ``transformer_lens.patching.get_act_patch_direct_path`` (TL 4 only).
- ``bootstrap_ci`` / ``derive_generator``: TL 4's ``utilities.statistics``; on TL 3 a local percentile
  bootstrap that draws the same resamples from the same seed, so a study's intervals do not depend on
  the TransformerLens version (tested against TL 4's where both exist).
"""

from __future__ import annotations

import hashlib
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


def _derive_generator(seed: int, *labels: object) -> torch.Generator:
    """A CPU generator keyed on ``seed`` and labels, stable across processes (SHA-256, not hash())."""
    key = ":".join([str(seed), *(str(label) for label in labels)]).encode()
    derived = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & 0x7FFFFFFFFFFFFFFF
    return torch.Generator(device="cpu").manual_seed(derived)


def _bootstrap_ci(
    x: torch.Tensor,
    *,
    dim: int = -1,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    generator: torch.Generator | None = None,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile bootstrap interval of the mean along ``dim`` (that dim removed)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    moved = x.movedim(dim, -1)
    n = moved.shape[-1]
    if n < 1:
        raise ValueError("cannot bootstrap an empty axis")
    gen = generator if generator is not None else _derive_generator(0)
    means = []
    # Drawn in chunks of the same size as TL 4's, so the same generator gives the same resamples.
    for start in range(0, n_resamples, chunk_size):
        idx = torch.randint(0, n, (min(chunk_size, n_resamples - start), n), generator=gen).to(moved.device)
        means.append(moved[..., idx].mean(-1))
    draws = torch.cat(means, dim=-1).to(torch.promote_types(x.dtype, torch.float32))
    alpha = (1.0 - confidence) / 2.0
    return torch.quantile(draws, alpha, dim=-1).to(x.dtype), torch.quantile(draws, 1.0 - alpha, dim=-1).to(x.dtype)


try:
    from transformer_lens.utilities.statistics import bootstrap_ci, derive_generator
except ImportError:  # TL 3.x
    bootstrap_ci, derive_generator = _bootstrap_ci, _derive_generator  # type: ignore[assignment]


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
    "bootstrap_ci",
    "derive_generator",
    "in_function_transform",
]
