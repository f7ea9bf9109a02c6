"""Checkpoint <-> hooked weights, one file per architecture, chosen by config.json's ``model_type``.

Each converter depends on the config alone (never on the model). Adding an architecture: a
converter file and a line in CONVERTERS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from weights_conversion import timesformer, videomae, videoprism, vivit, vjepa2
from weights_conversion.common import CheckpointError, check_keys, checkpoint_has_classifier, is_hooked_layout
from weights_conversion.vivit import convert_vivit_weights, expected_hf_shapes, hooked_to_hf_weights, normalize_hf_keys


class Converter(NamedTuple):
    to_hooked: Callable  # (state_dict, cfg) -> hooked state dict (checks keys, shapes, finiteness)
    to_hf: Callable  # (hooked state dict, cfg, *, layout="transformers"|"hub", prefix=None) -> HF state dict


CONVERTERS: dict[str, Converter] = {
    "vivit": Converter(vivit.convert_vivit_weights, vivit.hooked_to_hf_weights),
    "videomae": Converter(videomae.convert_videomae_weights, videomae.hooked_to_hf_weights),
    "timesformer": Converter(timesformer.convert_timesformer_weights, timesformer.hooked_to_hf_weights),
    "vjepa2": Converter(vjepa2.convert_vjepa2_weights, vjepa2.hooked_to_hf_weights),
    # VideoPrismForVideoClassification / VisionModel / VideoModel; "videoprism" (the CLIP model) is its video tower.
    "videoprism_vision_model": Converter(videoprism.convert_videoprism_weights, videoprism.hooked_to_hf_weights),
    "videoprism": Converter(videoprism.convert_videoprism_weights, videoprism.hooked_to_hf_weights),
}


def converter(model_type: str) -> Converter:
    if model_type not in CONVERTERS:
        raise ValueError(f"no converter for model_type {model_type!r}; known: {sorted(CONVERTERS)}")
    return CONVERTERS[model_type]


__all__ = [
    "CONVERTERS",
    "CheckpointError",
    "Converter",
    "check_keys",
    "checkpoint_has_classifier",
    "converter",
    "convert_vivit_weights",
    "expected_hf_shapes",
    "hooked_to_hf_weights",
    "is_hooked_layout",
    "normalize_hf_keys",
]
