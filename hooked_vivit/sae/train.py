"""Training an SAE on a hook's token activations with SAELens's own ``SAETrainer`` (no wandb).

``train_sae(source, architecture=...)`` builds the SAELens training SAE of that architecture,
fits it on ``source.sae_batches()`` and returns the inference SAE (BatchTopK and Matryoshka
become JumpReLU SAEs, as SAELens saves them). ``save_sae`` writes SAELens's disk format
(``cfg.json`` + ``sae_weights.safetensors``, read back by ``sae_lens.SAE.load_from_disk``) plus
``provenance.json``: the hook, the model, the data and the training run.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from hooked_vivit.sae.activations import ActivationSource

PROVENANCE_FILE = "provenance.json"
EVALUATION_FILE = "evaluation.json"
ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka")


def require_sae_lens():
    try:
        import sae_lens
    except ImportError as e:
        raise ImportError(
            "hooked_vivit.sae needs SAELens 6 (which needs TransformerLens 3.x): pip install 'hooked-vivit[sae]'"
        ) from e
    return sae_lens


def training_sae(
    architecture: str,
    d_in: int,
    d_sae: int,
    *,
    k: int = 32,
    l1_coefficient: float = 5.0,
    matryoshka_widths: list[int] | None = None,
    device: str = "cpu",
    seed: int = 0,
    metadata: dict | None = None,
):
    """A fresh SAELens training SAE of ``architecture`` (ARCHITECTURES); ``k`` is the TopK /
    BatchTopK L0, ``l1_coefficient`` the standard and JumpReLU sparsity penalty."""
    sl = require_sae_lens()
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if d_sae < 1 or d_in < 1:
        raise ValueError(f"d_sae and d_in must be >= 1, got {d_sae} and {d_in}")
    common = dict(d_in=d_in, d_sae=d_sae, device=device, dtype="float32")
    if architecture == "standard":
        cfg = sl.StandardTrainingSAEConfig(l1_coefficient=l1_coefficient, **common)
        cls = sl.StandardTrainingSAE
    elif architecture == "jumprelu":
        cfg = sl.JumpReLUTrainingSAEConfig(l0_coefficient=l1_coefficient, **common)
        cls = sl.JumpReLUTrainingSAE
    elif architecture == "topk":
        cfg = sl.TopKTrainingSAEConfig(k=k, **common)
        cls = sl.TopKTrainingSAE
    elif architecture == "batchtopk":
        cfg = sl.BatchTopKTrainingSAEConfig(k=k, **common)
        cls = sl.BatchTopKTrainingSAE
    else:
        if not hasattr(sl, "MatryoshkaBatchTopKTrainingSAE"):
            raise ValueError(f"this SAELens ({sl.__version__}) has no Matryoshka SAE")
        widths = matryoshka_widths or [d_sae // 8, d_sae // 4, d_sae // 2, d_sae]
        cfg = sl.MatryoshkaBatchTopKTrainingSAEConfig(k=k, matryoshka_widths=widths, **common)
        cls = sl.MatryoshkaBatchTopKTrainingSAE
    for key, value in (metadata or {}).items():
        cfg.metadata[key] = value
    torch.manual_seed(seed)  # the initial weights
    return cls(cfg)


def train_sae(
    source: ActivationSource,
    *,
    architecture: str = "topk",
    d_sae: int = 1024,
    k: int = 32,
    l1_coefficient: float = 5.0,
    lr: float = 4e-4,
    epochs: int = 1,
    device: str = "cpu",
    seed: int = 0,
    metadata: dict | None = None,
) -> tuple[Any, dict]:
    """Fit an SAE on ``epochs`` passes over the source's tokens; returns (inference SAE, run record:
    steps, samples, wall and CPU seconds, SAELens's final L0 and dead count)."""
    sl = require_sae_lens()
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    sae = training_sae(
        architecture,
        source.d_in,
        d_sae,
        k=k,
        l1_coefficient=l1_coefficient,
        device=device,
        seed=seed,
        metadata=metadata,
    )
    steps_per_epoch = source.n_tokens // source.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"{source.n_tokens} tokens make no whole batch of {source.batch_size}: render more clips or lower batch_size"
        )
    total = steps_per_epoch * source.batch_size * epochs
    steps = steps_per_epoch * epochs
    window = max(1, min(200, steps // 4))
    cfg = SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=source.batch_size,
        lr=lr,
        lr_end=lr / 10,
        device=device,
        lr_warm_up_steps=min(50, steps // 10),
        lr_decay_steps=steps // 5,
        lr_scheduler_name="constant",
        dead_feature_window=window,
        feature_sampling_window=window,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=1,
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    trainer = _trainer(sl)(cfg, sae, source.sae_batches(epochs=None))
    trained = trainer.fit()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    # SAELens's end-of-training counts, which cfg.json keeps, are over its last windows of training
    # batches, not evaluation.json's held-out tokens: each file says what it counts.
    dead_steps = window + 1  # dead: steps since the feature last fired > dead_feature_window
    definitions = {
        "num_dead_features_definition": (
            f"features that fired on none of the last {dead_steps} training batches ({dead_steps * source.batch_size} "
            f"tokens; SAELens's dead_feature_window = {window} steps), not the held-out tokens of evaluation.json's dead"
        ),
        "l0_definition": (
            f"mean active features per training token over SAELens's last feature-sampling window (at most {window} "
            "steps), not the held-out tokens of evaluation.json's l0"
        ),
    }
    for key, value in definitions.items():
        trained.cfg.metadata[key] = value
    with torch.no_grad():
        inference = _to_inference(trained)
    run = {
        "architecture": architecture,
        "d_in": source.d_in,
        "d_sae": d_sae,
        "k": k if "topk" in architecture or architecture == "matryoshka" else None,
        "l1_coefficient": l1_coefficient if architecture in ("standard", "jumprelu") else None,
        "lr": lr,
        "epochs": epochs,
        "steps": trainer.n_training_steps,
        "samples": trainer.n_training_samples,
        "batch_size": source.batch_size,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "torch_threads": torch.get_num_threads(),
        "saelens_final_l0": trained.cfg.metadata.get("l0"),
        "saelens_dead_features": trained.cfg.metadata.get("num_dead_features"),
        "saelens_dead_features_definition": definitions["num_dead_features_definition"],
        "saelens_final_l0_definition": definitions["l0_definition"],
    }
    return inference, run


def _trainer(sl):
    """SAELens's SAETrainer with its progress bar advanced every step: SAELens moves it once per 100
    steps, so a shorter run sat at 0 % until it ended."""

    class Trainer(sl.SAETrainer):
        def _update_pbar(self, step_output, pbar, update_interval: int = 100):
            super()._update_pbar(step_output, pbar, update_interval=1)

    return Trainer


def _to_inference(trained):
    """The inference SAE SAELens saves for a training SAE (its own save_inference_model, round trip)."""
    import tempfile

    sl = require_sae_lens()
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        return sl.SAE.load_from_disk(tmp)


def save_sae(sae: Any, path: Path, provenance: dict, evaluation: dict | None = None) -> Path:
    """SAELens's disk format in ``path`` (cfg.json, sae_weights.safetensors) plus provenance.json
    and, if given, evaluation.json."""
    from hooked_vivit.analysis.report import write_json

    sae.save_model(path)
    umask = os.umask(0)
    os.umask(umask)
    for weights in Path(path).glob("*.safetensors"):
        os.chmod(weights, 0o666 & ~umask)  # the user's umask, as cfg.json beside it (safetensors writes 0600)
    write_json(path / PROVENANCE_FILE, provenance)
    if evaluation is not None:
        write_json(path / EVALUATION_FILE, evaluation)
    return path


def load_sae(path: str | Path, device: str = "cpu") -> tuple[Any, dict]:
    """(SAELens SAE, provenance) from a directory save_sae wrote."""
    sl = require_sae_lens()
    path = Path(path).expanduser()
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(f"{path}: no SAE here (expected SAELens's cfg.json and sae_weights.safetensors)")
    sae = sl.SAE.load_from_disk(path, device=device)
    prov_path = path / PROVENANCE_FILE
    provenance = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    # What splice checks (the hook and the model weights the SAE was trained on), where SAELens's cfg lacks it.
    recorded = {
        "hook_name": provenance.get("hook"),
        "weights_fingerprint": provenance.get("model", {}).get("weights_fingerprint"),
    }
    for key, value in recorded.items():
        if value is not None and key not in sae.cfg.metadata:
            sae.cfg.metadata[key] = value
    return sae, provenance


def environment() -> dict:
    from importlib.metadata import version

    return {
        "sae_lens": version("sae-lens"),
        "transformer_lens": version("transformer-lens"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
