"""Shapes of the tensors the public API passes around (jaxtyping), defined once."""

from __future__ import annotations

import torch
from jaxtyping import Float

# What a video model takes: preprocessed clips, frames first, channels before the pixel grid (HF's layout).
PixelValues = Float[torch.Tensor, "batch frames channels height width"]

__all__ = ["PixelValues"]
