"""hooked-vivit: TransformerLens-style interpretability for video transformers (ViViT, VideoMAE, TimeSformer, V-JEPA 2, VideoPrism).

from hooked_vivit import HookedViViT
model = HookedViViT.from_pretrained("path/to/vivit")       # or google/vivit-b-16x2-kinetics400
logits, cache = model.run_with_cache(pixel_values)          # [batch, frames, 3, H, W]
"""

from hooked_vivit.config import HookedViViTConfig
from hooked_vivit.labels import format_top_k, kinetics400_labels, top_k
from hooked_vivit.model import HookedVideoTransformer, HookedViViT, HookNameError
from hooked_vivit.timesformer import HookedTimeSformer, HookedTimeSformerConfig
from hooked_vivit.token_grid import TokenGrid
from hooked_vivit.videomae import HookedVideoMAE, HookedVideoMAEConfig
from hooked_vivit.videoprism import HookedVideoPrism, HookedVideoPrismConfig
from hooked_vivit.vjepa2 import HookedVJEPA2, HookedVJEPA2Config

__version__ = "0.1.0"

__all__ = [
    "HookNameError",
    "HookedTimeSformer",
    "HookedTimeSformerConfig",
    "HookedVideoMAE",
    "HookedVideoMAEConfig",
    "HookedVideoPrism",
    "HookedVideoPrismConfig",
    "HookedVJEPA2",
    "HookedVJEPA2Config",
    "HookedVideoTransformer",
    "HookedViViT",
    "HookedViViTConfig",
    "TokenGrid",
    "format_top_k",
    "kinetics400_labels",
    "top_k",
]
