"""Perturbed small transformers ViViT models and inputs for parity checks: the tests, the parity
table (benchmarks/parity_table.py) and the GPU checks (benchmarks/gpu_checks.py) build them here.

Every parameter is perturbed: HF initialises LayerNorms to 1 and biases / CLS / position
embeddings to 0, which would let a wrong weight mapping pass.
"""

from __future__ import annotations

import torch
from transformers import VivitConfig, VivitForVideoClassification, VivitModel

# Small configs covering the shapes that break converters: non-square frames, tubelets other than
# (2, 16, 16), qkv_bias False, odd head counts, 1 and 3 layers.
SMALL_CONFIGS = {
    "nonsquare_2x8x8_3heads": dict(
        image_size=[32, 48],
        num_frames=4,
        tubelet_size=[2, 8, 8],
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=48,
        num_labels=7,
    ),
    "nobias_1layer_5heads": dict(
        image_size=[16, 32],
        num_frames=3,
        tubelet_size=[1, 8, 16],
        hidden_size=40,
        num_hidden_layers=1,
        num_attention_heads=5,
        intermediate_size=64,
        qkv_bias=False,
        num_labels=4,
    ),
    "3layers_4x4x4": dict(
        image_size=16,
        num_frames=8,
        tubelet_size=[4, 4, 4],
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=96,
        num_labels=3,
    ),
}


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter of an HF ViViT in place: LayerNorm weights around 1, CLS and position
    embeddings and biases around 0, other weights by small noise (deterministic in ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if (
                name.endswith("layernorm_before.weight")
                or name.endswith("layernorm_after.weight")
                or name.endswith("layernorm.weight")
            ):
                p.copy_(1.0 + 0.3 * noise)
            elif "cls_token" in name or "position_embeddings" in name:
                p.copy_(0.5 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.add_(0.05 * noise)
    return model


def make_hf_model(model_cls, config, attn: str = "eager", seed: int = 0):
    """A transformers model (any architecture) of ``config`` in eval mode, initialised under
    ``torch.manual_seed(seed)``, every parameter then perturbed (perturb_)."""
    torch.manual_seed(seed)
    return perturb_(model_cls._from_config(config, attn_implementation=attn).eval(), seed)


def random_pixels(num_frames: int, image_size, batch: int = 2, seed: int = 1, channels: int = 3) -> torch.Tensor:
    """Standard-normal pixel values [batch, frames, channels, H, W]; ``image_size`` an int or (H, W, ...)
    (deterministic in ``seed``)."""
    H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)[:2]
    return torch.randn(batch, num_frames, channels, H, W, generator=torch.Generator().manual_seed(seed))


def make_hf(config_kwargs: dict, attn: str = "eager", seed: int = 0, backbone: bool = False):
    """A perturbed transformers ViViT (classifier, or ``backbone=True``: VivitModel) of a config, in eval mode."""
    cls = VivitModel if backbone else VivitForVideoClassification
    return make_hf_model(cls, VivitConfig(**config_kwargs), attn, seed)


def pixels(config_kwargs: dict, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Standard-normal pixel values [batch, frames, 3, H, W] for a ViViT config (deterministic in ``seed``)."""
    return random_pixels(config_kwargs["num_frames"], config_kwargs["image_size"], batch, seed)


def max_rel(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs difference / max(1, max |reference|): the parity target is <= 1e-5."""
    actual, reference = actual.detach().double(), reference.detach().double()
    return float((actual - reference).abs().max() / max(1.0, float(reference.abs().max())))


# TimeSformer (tests/test_timesformer.py, benchmarks/parity_table_timesformer.py).
# Odd shapes: a frame size the patch leaves over (26 px, 8 px patches), one patch per frame, no
# qkv bias, gelu_new, another eps, 1 and 3 layers, head counts that are not powers of two.
TIMESFORMER_CONFIGS = {
    "26px_3frames_3heads": dict(
        image_size=26,
        patch_size=8,
        num_frames=3,
        hidden_size=24,
        num_attention_heads=3,
        num_hidden_layers=2,
        intermediate_size=37,
        num_labels=5,
    ),
    "nobias_1layer_5heads": dict(
        image_size=20,
        patch_size=4,
        num_frames=5,
        hidden_size=40,
        num_attention_heads=5,
        num_hidden_layers=1,
        intermediate_size=64,
        num_labels=4,
        qkv_bias=False,
        hidden_act="gelu_new",
        layer_norm_eps=1e-5,
    ),
    "3layers_one_patch": dict(
        image_size=16,
        patch_size=16,
        num_frames=2,
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=3,
        intermediate_size=96,
        num_labels=3,
    ),
}


def make_timesformer(kw: dict, seed: int = 0, cls=None):
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    return make_hf_model(cls or TimesformerForVideoClassification, TimesformerConfig(**kw), "eager", seed)


def timesformer_pixels(kw: dict, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return random_pixels(kw["num_frames"], kw["image_size"], batch, seed)
