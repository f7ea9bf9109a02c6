"""The reference paper's analysis: experiments (data), report (figures, HTML), pipeline (commands)."""

from hooked_vivit.analysis.experiments import (
    activation_deltas,
    class_direction,
    cls_attention,
    component_recovery,
    layer_probes,
    probe_features,
    region_ablation,
    token_dla,
    token_masks,
)

__all__ = [
    "activation_deltas",
    "class_direction",
    "cls_attention",
    "component_recovery",
    "layer_probes",
    "probe_features",
    "region_ablation",
    "token_dla",
    "token_masks",
]
