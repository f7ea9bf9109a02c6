"""Token activations of one hook over many clips, shuffled, in the batches SAELens trains on.

``ActivationSource(model, hook, clips)`` runs the model over clips that a torch ``DataLoader``
renders (``SyntheticClips``: hooked_vivit.synthetic) or decodes (``VideoFolder``: every video in a
folder, through ``video.load_video``) in worker processes, takes the hook's activation of every
token ([batch, n_ctx, d] hooks as they are; [batch, n_ctx, heads, d_head] hooks such as ``hook_z``
flattened to heads * d_head), and passes them through a shuffle buffer. Iterating it yields
``(activations [batch_size, d_in], provenance [batch_size, 6])``; ``sae_batches()`` yields the
activations alone, the ``DataProvider`` SAELens's ``SAETrainer`` takes.

Provenance is one int64 row per token, columns ``PROVENANCE_COLUMNS``: the clip (an index into
``source.clips``), the token index, its frame slot, row and column on the model's TokenGrid (-1 for
a prefix token) and whether it is a prefix token (CLS). ``grid.pixel_box(token)`` is then the
exact pixel window the token sees in the clip's model input (``clip_pixels``).

The forward stops after the hook's block (``stop_at_layer``): later blocks cannot change it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

PROVENANCE_COLUMNS = ("clip", "token", "slot", "row", "col", "is_prefix")
# Seeds the SAE data is rendered from: above every range the organism and the analysis use
# (hooked_vivit.organism.data: train/val/test/probe below 4,000,000, analysis 4,000,000-6,999,999).
SAE_SEEDS = {"train": 7_000_000, "eval": 8_000_000}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
# Hooks whose activation is not one vector per token.
_NOT_PER_TOKEN = ("hook_attn_scores", "hook_pattern", "hook_pattern_rows")


def hook_layer(model: HookedVideoTransformer, hook: str) -> int | None:
    """The block a hook lives in (None: before the blocks, i.e. the embedding; n_layers: after them)."""
    if hook not in model.hook_dict:
        model.check_hook_names([hook])  # the library's message (nearest names, get_act_name shorthand)
    if hook.rsplit(".", 1)[-1] in _NOT_PER_TOKEN:
        raise ValueError(
            f"{hook} is an attention map ([batch, heads, queries, keys]), not one vector per token; "
            "an SAE reads resid_pre/mid/post, attn_out, mlp_out, hook_z, hook_post and the like"
        )
    if hook.startswith("blocks."):
        return int(hook.split(".")[1])
    if hook.startswith("ln_final") or hook.startswith("unembed"):
        return model.cfg.n_layers
    return None


def hook_d_in(model: HookedVideoTransformer, hook: str) -> int:
    """The SAE input width of a hook: the last dims of its activation flattened (hook_z: heads * d_head)."""
    from hooked_vivit.cache_memory import hook_shape

    shape = hook_shape(model.cfg, hook, 1)
    if shape is None:
        model.check_hook_names([hook])
    return int(np.prod(shape[2:]))


def token_provenance(grid: Any, clip_ids: torch.Tensor) -> torch.Tensor:
    """[len(clip_ids) * n_ctx, 6] provenance rows (PROVENANCE_COLUMNS) of every token of the clips, in order."""
    n_ctx, n_prefix = grid.n_ctx, grid.n_prefix
    token = torch.arange(n_ctx)
    slot = torch.full((n_ctx,), -1)
    row, col = slot.clone(), slot.clone()
    patch = token[n_prefix:] - n_prefix
    per_slot = grid.n_rows * grid.n_cols
    slot[n_prefix:] = patch // per_slot
    row[n_prefix:] = (patch % per_slot) // grid.n_cols
    col[n_prefix:] = patch % grid.n_cols
    is_prefix = (token < n_prefix).long()
    one = torch.stack([token, slot, row, col, is_prefix], dim=1)  # [n_ctx, 5]
    clips = clip_ids.long().repeat_interleave(n_ctx)[:, None]
    return torch.cat([clips, one.repeat(len(clip_ids), 1)], dim=1)


# ------------------------------------------------------------------------------------------ clips
class SyntheticClips(Dataset):
    """Rendered clips (hooked_vivit.synthetic) at the model's frame count and size, seeds
    ``seed0 + i``, the actions in turn, each action's outcomes balanced. Items: (pixel values
    [T, 3, H, W], clip index)."""

    def __init__(
        self, model_cfg: Any, n_clips: int, *, seed0: int = SAE_SEEDS["train"], actions: Sequence[str] | None = None
    ):
        from hooked_vivit import synthetic

        if n_clips < 1:
            raise ValueError(f"n_clips must be >= 1, got {n_clips}")
        H, W = model_cfg.image_size
        if H != W:
            raise ValueError(f"synthetic clips are square; this model takes {H}x{W} frames: use VideoFolder")
        self.cfg = model_cfg
        self.actions = tuple(actions or synthetic.ACTIONS)
        self.specs = []
        for i in range(n_clips):
            action = self.actions[i % len(self.actions)]
            outcomes = synthetic.OUTCOMES.get(action, ("none",))
            k = i // len(self.actions)
            self.specs.append(
                {"kind": "synthetic", "action": action, "seed": seed0 + i, "outcome": outcomes[k % len(outcomes)]}
            )

    def __len__(self) -> int:
        return len(self.specs)

    def frames(self, i: int) -> np.ndarray:
        from hooked_vivit import synthetic

        s = self.specs[i]
        return synthetic.render_clip(
            s["action"], s["seed"], outcome=s["outcome"], num_frames=self.cfg.num_frames, size=self.cfg.image_size[0]
        ).frames

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from hooked_vivit.video import normalize

        return normalize(torch.from_numpy(self.frames(i)), config=self.cfg), i

    def label(self, i: int) -> int | None:
        """The clip's class index for a model whose classes are synthetic.ACTIONS (the organism)."""
        from hooked_vivit import synthetic

        return synthetic.ACTIONS.index(self.specs[i]["action"])


class VideoFolder(Dataset):
    """Every video file in a folder (sorted by name), ``num_frames`` sampled uniformly and
    preprocessed to the model's input (``video.preprocess``). Items: (pixel values, clip index)."""

    def __init__(self, model_cfg: Any, folder: str | Path, *, recursive: bool = False):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder of videos")
        pattern = "**/*" if recursive else "*"
        paths = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        if not paths:
            raise FileNotFoundError(f"{folder}: holds no video file ({', '.join(VIDEO_SUFFIXES)})")
        self.cfg = model_cfg
        self.specs = [{"kind": "video", "path": str(p)} for p in paths]

    def __len__(self) -> int:
        return len(self.specs)

    def _pixels(self, i: int) -> torch.Tensor:
        from hooked_vivit.video import load_video, preprocess

        return preprocess(load_video(self.specs[i]["path"], self.cfg.num_frames), config=self.cfg)[0]

    def frames(self, i: int) -> np.ndarray:
        """The model's input frames (resized and cropped), uint8 [T, H, W, 3]: what the tokens see."""
        from hooked_vivit.video import unnormalize

        return unnormalize(self._pixels(i), config=self.cfg)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._pixels(i), i

    def label(self, i: int) -> int | None:
        return None


def clip_pixels(dataset: Dataset, i: int) -> torch.Tensor:
    """The pixel values [T, 3, H, W] the model read for clip i."""
    return dataset[i][0]


# ------------------------------------------------------------------------------------------ source
def shuffled_batches(
    pieces, batch_size: int, buffer_tokens: int, seed: int = 0, shuffle: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(activations, provenance) pieces -> batches of ``batch_size`` rows through a mixing buffer:
    once ``buffer_tokens`` rows are held they are permuted, whole batches from the first half go
    out and the rest waits to mix with what comes next (SAELens's scheme); the end is flushed."""
    gen = torch.Generator().manual_seed(seed)
    acts: list[torch.Tensor] = []
    provs: list[torch.Tensor] = []
    held = 0
    for a, p in pieces:
        acts.append(a)
        provs.append(p)
        held += len(a)
        if held >= buffer_tokens:
            a_all, p_all = torch.cat(acts), torch.cat(provs)
            if shuffle:
                perm = torch.randperm(len(a_all), generator=gen)
                a_all, p_all = a_all[perm], p_all[perm]
            n_out = (len(a_all) // 2) // batch_size * batch_size
            for i in range(0, n_out, batch_size):
                yield a_all[i : i + batch_size], p_all[i : i + batch_size]
            acts, provs, held = [a_all[n_out:]], [p_all[n_out:]], len(a_all) - n_out
    if held:
        a_all, p_all = torch.cat(acts), torch.cat(provs)
        if shuffle:
            perm = torch.randperm(len(a_all), generator=gen)
            a_all, p_all = a_all[perm], p_all[perm]
        for i in range(0, len(a_all), batch_size):
            yield a_all[i : i + batch_size], p_all[i : i + batch_size]


@dataclass
class ActivationSource:
    """Shuffled token activations of ``hook`` over ``clips`` (a SyntheticClips or VideoFolder).

    ``clip_batch`` clips run per forward; ``buffer_tokens`` tokens are mixed before half of them
    are handed out (SAELens's mixing buffer scheme); ``num_workers`` DataLoader processes render or
    decode clips while the model runs. ``include_prefix=False`` drops CLS tokens. Iterating again
    replays the same clips (the same order with the same ``seed``)."""

    model: HookedVideoTransformer
    hook: str
    clips: Dataset
    batch_size: int = 4096
    clip_batch: int = 16
    buffer_tokens: int = 65536
    num_workers: int = 0
    include_prefix: bool = True
    shuffle: bool = True
    seed: int = 0
    device: str | torch.device | None = None
    layer: int | None = field(init=False)
    d_in: int = field(init=False)

    def __post_init__(self):
        self.layer = hook_layer(self.model, self.hook)
        self.d_in = hook_d_in(self.model, self.hook)
        for name in ("batch_size", "clip_batch", "buffer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device is None:
            self.device = self.model.W_E.device

    @property
    def grid(self):
        return self.model.cfg.grid

    @property
    def tokens_per_clip(self) -> int:
        return self.grid.n_ctx - (0 if self.include_prefix else self.grid.n_prefix)

    @property
    def n_tokens(self) -> int:
        return len(self.clips) * self.tokens_per_clip

    def loader(self) -> DataLoader:
        workers = min(self.num_workers, os.cpu_count() or 1)
        return DataLoader(
            self.clips,
            batch_size=self.clip_batch,
            shuffle=False,
            num_workers=workers,
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
        )

    @torch.inference_mode()
    def activations(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The hook's activation [batch, n_ctx, d_in] of a pixel batch (later blocks skipped)."""
        captured = {}

        def grab(act, hook):
            captured["a"] = act
            return act

        stop = None if self.layer is None or self.layer >= self.model.cfg.n_layers else self.layer + 1
        if self.layer is None:
            stop = 0
        with self.model.hooks(fwd_hooks=[(self.hook, grab)]):
            self.model(pixel_values.to(self.device), stop_at_layer=stop)
        act = captured["a"]
        return act.flatten(2) if act.ndim > 3 else act

    def clip_tokens(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Unshuffled (activations [clips * tokens, d_in], provenance) per clip batch, in clip order."""
        keep = None if self.include_prefix else slice(self.grid.n_prefix, None)
        for pixel_values, ids in self.loader():
            act = self.activations(pixel_values)
            prov = token_provenance(self.grid, ids)
            if keep is not None:
                act = act[:, keep]
                prov = prov.view(len(ids), self.grid.n_ctx, -1)[:, keep].reshape(-1, prov.shape[-1])
            yield act.reshape(-1, act.shape[-1]).float(), prov

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pieces = ((a.cpu(), p) for a, p in self.clip_tokens())
        return shuffled_batches(pieces, self.batch_size, self.buffer_tokens, self.seed, self.shuffle)

    def sae_batches(self, *, epochs: int | None = None, full_only: bool = True) -> Iterator[torch.Tensor]:
        """Activation batches alone (SAELens's DataProvider), over ``epochs`` passes (None: forever);
        ``full_only`` drops a short last batch so every training step has ``batch_size`` rows."""
        epoch = 0
        while epochs is None or epoch < epochs:
            for a, _ in self:
                if full_only and len(a) < self.batch_size:
                    continue
                yield a
            epoch += 1
            self.seed += 1  # another shuffle order next pass

    def collect(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token, unshuffled: (activations [n_tokens, d_in], provenance [n_tokens, 6])."""
        acts, provs = zip(*self.clip_tokens())
        return torch.cat(acts), torch.cat(provs)


# ------------------------------------------------------------------------------------------ extract shards
@dataclass
class ShardSource:
    """Token activations already on disk: the shards ``hooked-vivit extract`` writes (index.json +
    shard-NNNNN.safetensors holding ``<hook>`` [rows, ...], ``row.clip`` and ``row.token``), read
    one shard at a time through the same shuffle buffer, with the same provenance rows (clip =
    the index into index.json's "clips"). Usable wherever ActivationSource is (``train_sae``)."""

    folder: str | Path
    hook: str
    batch_size: int = 4096
    buffer_tokens: int = 65536
    shuffle: bool = True
    seed: int = 0
    index: dict = field(init=False)
    d_in: int = field(init=False)

    def __post_init__(self):
        import json

        path = Path(self.folder).expanduser() / "index.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such file; {self.folder} is not a finished hooked-vivit extract output"
            )
        self.index = json.loads(path.read_text())
        if self.hook not in self.index.get("hooks", {}):
            raise KeyError(
                f"{self.hook!r} was not extracted into {self.folder}; it holds {', '.join(self.index.get('hooks', {}))}"
            )
        self.d_in = int(np.prod(self.index["hooks"][self.hook]["shape"]))
        table = {p["token"]: p for p in self.index["positions"]["tokens"]}
        n = max(table) + 1
        self._place = torch.full((n, 4), -1, dtype=torch.int64)  # slot, row, col, is_prefix per token
        for t, p in table.items():
            on_grid = p.get("frame_slot") is not None
            self._place[t] = torch.tensor(
                [
                    p["frame_slot"] if on_grid else -1,
                    p["row"] if on_grid else -1,
                    p["col"] if on_grid else -1,
                    0 if on_grid else 1,
                ]
            )

    @property
    def n_tokens(self) -> int:
        return int(sum(s["rows"] for s in self.index["shards"]))

    def shard_tokens(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from safetensors import safe_open

        for shard in self.index["shards"]:
            with safe_open(str(Path(self.folder).expanduser() / shard["file"]), framework="pt", device="cpu") as f:
                acts = f.get_tensor(self.hook).float()
                clip, token = f.get_tensor("row.clip").long(), f.get_tensor("row.token").long()
            prov = torch.cat([clip[:, None], token[:, None], self._place[token]], dim=1)
            yield acts.reshape(len(acts), -1), prov

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return shuffled_batches(self.shard_tokens(), self.batch_size, self.buffer_tokens, self.seed, self.shuffle)

    sae_batches = ActivationSource.sae_batches

    def collect(self) -> tuple[torch.Tensor, torch.Tensor]:
        acts, provs = zip(*self.shard_tokens())
        return torch.cat(acts), torch.cat(provs)
