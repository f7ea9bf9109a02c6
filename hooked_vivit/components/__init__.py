"""One component per file, in the order the data flows: embed -> blocks (ln, attention, mlp) -> unembed."""

from hooked_vivit.components.attention import Attention
from hooked_vivit.components.embed import PosEmbed, TubeletEmbed
from hooked_vivit.components.layer_norm import LayerNorm
from hooked_vivit.components.mlp import MLP
from hooked_vivit.components.sinusoidal_pos_embed import SinusoidalPosEmbed
from hooked_vivit.components.transformer_block import TransformerBlock
from hooked_vivit.components.unembed import Unembed

__all__ = [
    "Attention",
    "LayerNorm",
    "MLP",
    "PosEmbed",
    "SinusoidalPosEmbed",
    "TransformerBlock",
    "TubeletEmbed",
    "Unembed",
]
