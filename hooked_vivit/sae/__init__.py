"""Sparse autoencoders on video activations, through SAELens (``pip install 'hooked-vivit[sae]'``).

- ``activations``: ``ActivationSource`` (token activations of a hook over rendered clips or a video
  folder, shuffled, with per-token provenance), ``ShardSource`` (the same from ``hooked-vivit
  extract`` shards); needs no SAELens.
- ``train``: ``train_sae`` (SAELens's ``SAETrainer``; standard, topk, batchtopk, jumprelu,
  matryoshka), ``save_sae`` / ``load_sae`` (SAELens's disk format + provenance.json).
- ``splice``: ``splice(model, sae, hook, use_error_term=...)``, ``feature_acts``.
- ``evaluate``: FVU, L0, dead / dense, KL and accuracy spliced, temporal coherence.
- ``features``: top tokens and clips, feature maps on frames, minimal-pair differences, feature patching.
- ``commands``: ``hooked-vivit sae train`` / ``sae report``; ``shipped_sae_path()``.
"""

from hooked_vivit.sae.activations import (
    PROVENANCE_COLUMNS,
    SAE_SEEDS,
    ActivationSource,
    ShardSource,
    SyntheticClips,
    VideoFolder,
)

__all__ = ["PROVENANCE_COLUMNS", "SAE_SEEDS", "ActivationSource", "ShardSource", "SyntheticClips", "VideoFolder"]
