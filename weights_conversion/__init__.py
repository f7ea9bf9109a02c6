"""Checkpoint <-> hooked weights for ViViT (both Hugging Face key layouts)."""

from weights_conversion.vivit import (
    CheckpointError,
    check_keys,
    checkpoint_has_classifier,
    convert_vivit_weights,
    expected_hf_shapes,
    hooked_to_hf_weights,
    is_hooked_layout,
    normalize_hf_keys,
)

__all__ = [
    "CheckpointError",
    "check_keys",
    "checkpoint_has_classifier",
    "convert_vivit_weights",
    "expected_hf_shapes",
    "hooked_to_hf_weights",
    "is_hooked_layout",
    "normalize_hf_keys",
]
