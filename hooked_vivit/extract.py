"""``hooked-vivit extract``: activations of chosen hooks over a video collection, written to disk in
shards, resumable, data-parallel under ``torchrun``; and the reader for what it writes.

Output format (a folder, written through hooked_vivit.output_dir in resume mode)::

    index.json               what was extracted and where (below)
    shard-00000.safetensors  clips [0, S) of the collection, shard k clips [k*S, (k+1)*S), minus bad files:
        <hook name>          [rows, *shape]  the activation at (clip, token), in the stored dtype
        row.clip             int64 [rows]    the clip's index into index["clips"]
        row.token            int64 [rows]    the token index (ViViT: 0 = CLS, then patches in (slot, row, col) order)
    .hooked-vivit-manifest.json  the files the library wrote (hooked_vivit.output_dir)

Rows run over the clips in collection order and, within a clip, over ``index["positions"]["tokens"]``
in order: one row per (clip, position). index.json holds
    model      name, model_type, weights fingerprint (loading.weights_fingerprint), num_frames, image_size, tubelet_size, n_ctx
    hooks      {name: {"shape": per-row shape, "dtype"}}
    positions  {"spec": as given, "tokens": [{"token", "label", "frame_slot", "row", "col", "frames"}]}: each
               position's place on the model's TokenGrid (None for CLS) and the positions in the clip's
               sampled frames that its tubelet covers
    clips      one entry per clip: file, label, pair, role, start, end (as in the manifest), sha256 (of the
               file's bytes), frame_indices (the source frames sampled), shard, rows [first, stop) within the
               shard; or error for a bad file
    errors     [{"clip", "file", "reason"}]: the files that could not be used (skipped)
    shards     [{"file", "clips": [first, stop), "rows"}]
so the provenance of row r of a shard is: clip = row.clip[r] (its file, frame_indices), token = row.token[r]
(frame slot, grid row, grid column), and the source frames that token sees = clip's frame_indices at the
token's "frames". ``iter_activations`` / ``load_activations`` read it back.

Determinism and parallelism: the shard layout depends only on the collection and the settings, not
on the number of processes. Under torchrun rank r writes shards r, r + W, r + 2W, ... (W = world
size), each batch lies within one shard, and rank 0 writes index.json once all shards exist; so any
number of processes writes the same files, in the same order, as one process (bit-identical on CPU
when the kernels run with the same thread count).

Resume: every shard is written to a temporary name and renamed, so it exists whole or not at all.
An interrupted run (Ctrl-C, SIGTERM, SIGKILL, a node lost) leaves its shards in ``.OUT.resume``
beside ``OUT``; running the same command again skips the finished shards, redoes the rest, and
renames the folder to ``OUT`` when all are written. A different command (other hooks, positions,
dtype, shard size, collection, a clip's bytes or model weights) is refused, or with --overwrite discards the old
shards (only files extract writes; output_dir's rules hold: nothing else is ever deleted).
"""

from __future__ import annotations

import errno
import fnmatch
import json
import math
import os
import re
import secrets
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hooked_vivit.collection import Clip, Distributed, clip_loader, collection_digest, file_sha256, read_collection
from hooked_vivit.loading import weights_fingerprint
from hooked_vivit.output_dir import OutputDir

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

FORMAT = "hooked-vivit-activations"
VERSION = 1
INDEX = "index.json"
SHARD = "shard-{:05d}.safetensors"
# The names extract writes into its resume folder (output_dir's resume mode deletes only these).
# safetensors' save_file writes through its own temporary file beside the target (".tmp" and 6 letters or
# digits, Rust's tempfile), so a process killed inside it leaves one of those in the resume folder too.
_SAFETENSORS_TEMP = r"\.tmp[0-9A-Za-z]{6}"
OWNED = (
    r"shard-\d{5,}\.safetensors|\.shard-\d{5,}\.safetensors\.[0-9a-f]+\.tmp|index\.json|\.index\.json\.[0-9a-f]+\.tmp|"
    + _SAFETENSORS_TEMP
)
_TEMP = re.compile(r"\.(shard-\d{5,}\.safetensors|index\.json)\.[0-9a-f]+\.tmp|" + _SAFETENSORS_TEMP)
MAX_SHARD_CLIPS = 256  # the default cap: how much a lost process redoes, and how finely ranks share the work
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_KILL_ENV = (
    # tests only: "after:K[:RANK[:SIGNAL]]" or "writing:K[:RANK[:SIGNAL]]", SIGKILL (or SIGNAL) at this process's K-th shard
    "HOOKED_VIVIT_TEST_KILL"
)


# ---------------------------------------------------------------------------------------- settings
def load_model(name_or_path: str, device: str = "cpu") -> Any:
    """A hooked model by checkpoint directory, hub id or organism name (organism.model_source; None: the
    action organism), its class by model_type."""
    from hooked_vivit import organism
    from hooked_vivit.model import HookedVideoTransformer

    return HookedVideoTransformer.from_pretrained(organism.model_source(name_or_path), device=device)


def resolve_hooks(model: HookedVideoTransformer, hooks: str | Sequence[str]) -> list[str]:
    """Hook names (comma-separated or a list; shell-style patterns such as ``blocks.*.hook_resid_post``
    allowed), in the model's hook order. Each must have a token axis: activation [batch, n_ctx, ...].
    A named hook that cannot fire or has no token axis raises; a pattern skips such hooks (and raises
    only when it keeps none)."""
    from hooked_vivit.cache_memory import hook_shape

    def per_token(n: str) -> bool:
        shape = hook_shape(model.cfg, n, 1)
        return not (
            shape is None
            or len(shape) < 2
            or shape[1] != model.cfg.n_ctx
            or n.endswith(("hook_attn_scores", "hook_pattern"))
        )

    patterns = [h.strip() for h in (hooks.split(",") if isinstance(hooks, str) else hooks) if h and h.strip()]
    if not patterns:
        raise ValueError(
            "--hooks: no hook named; give names such as blocks.3.hook_resid_post (see hooked-vivit info --hooks)"
        )
    names = list(model.hook_dict)
    chosen: list[str] = []
    for p in patterns:
        pattern = any(ch in p for ch in "*?[")
        matched = [n for n in names if fnmatch.fnmatchcase(n, p)] if pattern else [p]
        if not matched:
            raise ValueError(f"--hooks {p!r} matches no hook of this model (see hooked-vivit info --hooks)")
        if pattern:  # the hooks that fire under this config and hold one row per token
            kept = [n for n in matched if model._fires(n) and per_token(n)]
            if not kept:
                dead = [n for n in matched if not model._fires(n)]
                flat = [n for n in matched if n not in dead]
                raise ValueError(
                    f"--hooks {p!r} matches {len(matched)} hooks, none of which extract can store: "
                    + (
                        f"{len(dead)} cannot fire under this config ({model._dead_hook_message(dead[0])}); "
                        if dead
                        else ""
                    )
                    + (
                        f"{len(flat)} have no token axis (e.g. {flat[0]}, shape {list(hook_shape(model.cfg, flat[0], 1))}); "
                        if flat
                        else ""
                    )
                    + "extract stores per-token activations [batch, tokens, ...] (residual stream, attn_out, mlp_out, "
                    "hook_z, mlp.hook_post, ...)"
                )
            matched = kept
        model.check_hook_names(matched)  # unknown names (with the nearest real ones), hooks that cannot fire
        for n in matched:
            if not per_token(n):
                shape = hook_shape(model.cfg, n, 1)
                raise ValueError(
                    f"--hooks {n}: its activation has shape {list(shape or [])} (batch first), without a token axis of "
                    f"n_ctx = {model.cfg.n_ctx} second; extract stores per-token activations [batch, tokens, ...] "
                    "(residual stream, attn_out, mlp_out, hook_z, mlp.hook_post, ...)"
                )
            if n not in chosen:
                chosen.append(n)
    return sorted(chosen, key=names.index)


def parse_positions(spec: str | Sequence[int], grid: Any) -> list[int]:
    """Token indices: "cls" (ViViT's token 0), "all", "patches", or explicit indices ("0,17,40")."""
    if isinstance(spec, str) and spec.strip().lower() in ("cls", "all", "patches"):
        kind = spec.strip().lower()
        if kind == "cls":
            if grid.n_prefix != 1:
                raise ValueError(
                    f"--positions cls: this model has no CLS token ({grid.n_prefix} prefix tokens; it pools the token "
                    "mean); use all, patches or token indices"
                )
            return [0]
        return list(range(grid.n_ctx)) if kind == "all" else list(range(grid.n_prefix, grid.n_ctx))
    try:
        tokens = [int(t) for t in (spec.split(",") if isinstance(spec, str) else spec)]
    except (TypeError, ValueError):
        raise ValueError(f"--positions {spec!r}: expected cls, all, patches or comma-separated token indices") from None
    bad = [t for t in tokens if not 0 <= t < grid.n_ctx]
    if bad or not tokens or len(set(tokens)) != len(tokens):
        raise ValueError(
            f"--positions {spec!r}: expected distinct token indices in [0, {grid.n_ctx})"
            + (f"; {bad[0]} is outside" if bad else "")
        )
    return tokens


def position_table(grid: Any, tokens: Sequence[int]) -> list[dict]:
    out = []
    for t in tokens:
        coords = grid.coords(t)
        entry = {"token": t, "label": grid.label(t), "frame_slot": None, "row": None, "col": None, "frames": None}
        if coords is not None:
            entry.update(
                frame_slot=coords[0], row=coords[1], col=coords[2], frames=list(grid.frames_of_slot(coords[0]))
            )
        out.append(entry)
    return out


def _store_dtype(dtype: str | torch.dtype | None, model: HookedVideoTransformer) -> torch.dtype:
    if dtype is None:
        return model.W_E.dtype
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


# ---------------------------------------------------------------------------------------- extraction
class _Plan:
    def __init__(
        self,
        model: HookedVideoTransformer,
        clips: list[Clip],
        hooks: Any,
        positions: Any,
        dtype: Any,
        shard_clips: int | None,
        shard_mb: float,
        clip_sha256: list[str | None],
    ):
        from hooked_vivit.cache_memory import hook_shape

        self.clips = clips
        self.clip_sha256 = clip_sha256
        self.hooks = resolve_hooks(model, hooks)
        self.tokens = parse_positions(positions, model.cfg.grid)
        self.positions_spec = positions if isinstance(positions, str) else ",".join(map(str, positions))
        self.dtype = _store_dtype(dtype, model)
        self.shapes = {h: list(hook_shape(model.cfg, h, 1)[2:]) for h in self.hooks}
        per_clip = len(self.tokens) * sum(math.prod(s) for s in self.shapes.values()) * self.dtype.itemsize
        if shard_clips is None:
            shard_clips = max(1, min(MAX_SHARD_CLIPS, int(shard_mb * 2**20 // per_clip)))
        if isinstance(shard_clips, bool) or not isinstance(shard_clips, int) or shard_clips < 1:
            raise ValueError(f"shard_clips must be an integer >= 1, got {shard_clips!r}")
        self.shard_clips = shard_clips
        self.n_shards = math.ceil(len(clips) / shard_clips)
        layers = [int(m.group(1)) for h in self.hooks if (m := re.match(r"blocks\.(\d+)\.", h))]
        in_blocks = len(layers) + sum(h in ("hook_embed", "hook_pos_embed") for h in self.hooks) == len(self.hooks)
        self.stop_at_layer = (
            (max(layers) + 1 if layers else 0) if in_blocks else None
        )  # skip the blocks after the last hook
        cfg = model.cfg
        self.model_info = {
            "name": cfg.model_name,
            "model_type": getattr(model, "model_type", None),
            "weights_fingerprint": weights_fingerprint(model),
            "num_frames": cfg.num_frames,
            "image_size": list(cfg.image_size),
            "tubelet_size": list(cfg.tubelet_size),
            "n_ctx": cfg.n_ctx,
        }
        self.settings = {
            "format_version": VERSION,
            "model": self.model_info,
            "collection": collection_digest(clips),
            "clips": len(clips),
            "clip_sha256": clip_sha256,  # each file's bytes (None: unreadable): a clip changed between runs is refused
            "hooks": self.hooks,
            "positions": self.tokens,
            "dtype": str(self.dtype).removeprefix("torch."),
            "shard_clips": shard_clips,
        }
        self.digest = _digest(self.settings)
        self.grid = cfg.grid

    def shard_range(self, k: int) -> range:
        return range(k * self.shard_clips, min((k + 1) * self.shard_clips, len(self.clips)))


def _digest(settings: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _clip_hashes(clips: list[Clip], dist: Distributed) -> list[str | None]:
    """Each clip's file_sha256, the reading shared among the ranks (clip i on rank i mod W)."""
    mine = {i: file_sha256(clips[i].path) for i in range(dist.rank, len(clips), dist.world)}
    merged: dict[int, str | None] = {}
    for part in dist.all_gather(mine):
        merged.update(part)
    return [merged[i] for i in range(len(clips))]


def _refuse_changed_clips(reserved: OutputDir, plan: _Plan) -> None:
    """An unfinished run of this collection whose clips' bytes have changed since: refused naming
    the clip(s) (output_dir's own check would only say that the settings differ)."""
    from hooked_vivit.output_dir import RESUME_STATE

    folder = reserved.resume_folder
    try:
        old = json.loads((folder / RESUME_STATE).read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no unfinished run (or one output_dir will judge)
    before, now = old.get("clip_sha256"), plan.settings["clip_sha256"]
    if reserved.overwrite or old.get("collection") != plan.settings["collection"] or not isinstance(before, list):
        return
    if len(before) != len(now) or before == now:
        return
    changed = [
        f"{c.file} ({'now missing' if b is None else 'missing then' if a is None else 'its bytes differ'})"
        for c, a, b in zip(plan.clips, before, now)
        if a != b
    ]
    also = sorted(k for k in set(old) | set(plan.settings) if k != "clip_sha256" and old.get(k) != plan.settings.get(k))
    raise ValueError(
        f"--videos: {changed[0]}"
        + (f" and {len(changed) - 1} more clip(s)" if len(changed) > 1 else "")
        + f" changed since the unfinished run in {folder} began"
        + (f" (which also differs in {', '.join(also)})" if also else "")
        + "; put the original file(s) back to resume it, or pass --overwrite to discard its shards"
    )


def _shard_metadata(path: Path) -> dict | None:
    """A finished shard's metadata, or None if the file is missing or unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata()
    except Exception:  # noqa: BLE001  any unreadable shard is simply redone
        return None


def _kill_point(when: str, count: int, rank: int) -> None:
    spec = os.environ.get(_KILL_ENV, "")
    if spec:
        parts = spec.split(":")
        if parts[0] == when and int(parts[1]) == count and (len(parts) < 3 or int(parts[2]) == rank):
            os.kill(os.getpid(), getattr(signal, parts[3]) if len(parts) > 3 else signal.SIGKILL)


def _no_space(e: BaseException) -> bool:
    """The disk (or the user's quota) is full: an OSError, or safetensors' SafetensorError ("I/O error: No
    space left on device (os error 28)")."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return type(e).__name__ == "SafetensorError" and any(
        f"(os error {n})" in str(e) for n in (errno.ENOSPC, errno.EDQUOT)
    )


def _disk_full(folder: Path, what: str) -> OSError:
    done = sum(1 for p in folder.iterdir() if re.fullmatch(r"shard-\d{5,}\.safetensors", p.name))
    error = OSError(
        f"disk full: no space left on the device holding {folder} while writing {what} (nothing of it was kept); "
        f"the {done} finished shard(s) there are kept: free some space and rerun the same command to resume"
    )
    error.errno = errno.ENOSPC
    return error


def _write_shard(
    folder: Path, k: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str], count: int, rank: int
) -> None:
    from safetensors.torch import save_file

    final = folder / SHARD.format(k)
    tmp = folder / f".{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the user's umask, as every other output (safetensors writes 0600)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before it gets its final name
        _kill_point("writing", count, rank)
        os.replace(tmp, final)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _no_space(e):
            raise _disk_full(folder, f"shard {k}") from e
        raise
    _kill_point("after", count, rank)


def _forward(
    model: HookedVideoTransformer,
    pixels: torch.Tensor,
    plan: _Plan,
    token_index: torch.Tensor | None,
    overflow: dict[str, int],
) -> dict[str, torch.Tensor]:
    """The chosen hooks' activations at the chosen tokens, in the stored dtype, on the CPU. ``overflow``
    counts per hook the finite values that the stored dtype cannot hold (float16: beyond 65504, stored as inf)."""
    captured: dict[str, torch.Tensor] = {}

    def grab(act: torch.Tensor, hook: Any) -> None:
        picked = act if token_index is None else act.index_select(1, token_index)
        stored = picked.to(dtype=plan.dtype)
        if torch.finfo(plan.dtype).max < torch.finfo(picked.dtype).max:
            overflow[hook.name] += int((stored.isinf() & picked.isfinite()).sum())
        captured[hook.name] = stored.to(device="cpu", copy=True).flatten(0, 1)  # [batch * positions, ...]

    with torch.inference_mode():
        model.run_with_hooks(
            pixels, return_type=None, stop_at_layer=plan.stop_at_layer, fwd_hooks=[(h, grab) for h in plan.hooks]
        )
    return captured


def _extract_shards(
    model: HookedVideoTransformer,
    plan: _Plan,
    folder: Path,
    dist: Distributed,
    *,
    batch_size: int,
    workers: int,
    progress: bool,
) -> int:
    """This rank's unfinished shards: decode (workers), run, write. Returns the clips it processed."""
    from tqdm.auto import tqdm

    mine = [
        k
        for k in range(dist.rank, plan.n_shards, dist.world)
        if (_shard_metadata(folder / SHARD.format(k)) or {}).get("settings") != plan.digest
    ]
    batches = [
        (k, list(plan.shard_range(k))[i : i + batch_size])
        for k in mine
        for i in range(0, len(plan.shard_range(k)), batch_size)
    ]
    device = model.W_E.device
    token_index = None if plan.tokens == list(range(model.cfg.n_ctx)) else torch.tensor(plan.tokens, device=device)
    P = len(plan.tokens)
    loader = clip_loader(
        plan.clips, model.cfg, [b for _, b in batches], workers=workers, pin_memory=device.type == "cuda"
    )
    bar = tqdm(
        total=sum(len(b) for _, b in batches), desc=f"extract (rank {dist.rank})", disable=not progress, unit="clip"
    )
    shard, acts, entries, errors, written = None, {}, [], [], 0
    overflow: dict[str, int] = {}

    def flush() -> None:
        nonlocal written
        rows = sum(e["rows"] for e in entries)
        if any(overflow.values()):
            _refuse_overflow(plan, shard, folder, overflow, rows)
        tensors = {
            h: torch.cat(acts[h]) if acts[h] else torch.empty((0, *plan.shapes[h]), dtype=plan.dtype)
            for h in plan.hooks
        }
        tensors["row.clip"] = torch.tensor([e["clip"] for e in entries for _ in range(P)], dtype=torch.int64)
        tensors["row.token"] = torch.tensor(plan.tokens * len(entries), dtype=torch.int64)
        meta = {
            "format": FORMAT,
            "version": str(VERSION),
            "settings": plan.digest,
            "shard": str(shard),
            "rows": str(rows),
            "clips": json.dumps(entries),
            "errors": json.dumps(errors),
        }
        written += 1
        _write_shard(folder, shard, tensors, meta, written, dist.rank)

    for (k, _), batch in zip(batches, loader):
        if k != shard:
            if shard is not None:
                flush()
            shard, acts, entries, errors = k, {h: [] for h in plan.hooks}, [], []
            overflow = dict.fromkeys(plan.hooks, 0)
        for clip, reason in batch["errors"]:
            errors.append({"clip": clip, "file": plan.clips[clip].file, "reason": reason})
        if batch["pixels"] is not None:
            out = _forward(model, batch["pixels"].to(device, non_blocking=True), plan, token_index, overflow)
            for h in plan.hooks:
                acts[h].append(out[h])
            first = sum(e["rows"] for e in entries)
            for j, (clip, frames) in enumerate(zip(batch["clips"], batch["frames"])):
                entries.append({"clip": clip, "frame_indices": frames, "first_row": first + j * P, "rows": P})
        bar.update(len(batch["clips"]) + len(batch["errors"]))
    if shard is not None:
        flush()
    bar.close()
    return sum(len(b) for _, b in batches)


def _refuse_overflow(plan: _Plan, shard: int, folder: Path, overflow: dict[str, int], rows: int) -> None:
    over = {h: n for h, n in overflow.items() if n}
    values = rows * sum(math.prod(plan.shapes[h]) for h in plan.hooks)
    name = str(plan.dtype).removeprefix("torch.")
    r = plan.shard_range(shard)
    raise ValueError(
        f"--dtype {name}: {sum(over.values())} of {values} values of shard {shard} (clips {r.start}-{r.stop - 1}; "
        + ", ".join(f"{h}: {n}" for h, n in over.items())
        + f") lie beyond {name}'s largest value {torch.finfo(plan.dtype).max:g} and would be stored as inf; "
        f"the shard was not written. Use --dtype bfloat16 (float32's range) or float32, with --overwrite to "
        f"discard the unfinished run in {folder}"
    )


def _write_index(folder: Path, plan: _Plan, source: str, world: int) -> dict:
    clips: list[dict] = [
        {**c.provenance(), **({"sha256": h} if h else {})} for c, h in zip(plan.clips, plan.clip_sha256)
    ]
    errors, shards = [], []
    for k in range(plan.n_shards):
        meta = _shard_metadata(folder / SHARD.format(k))
        if meta is None or meta.get("settings") != plan.digest:
            raise RuntimeError(
                f"shard {k} is missing after every rank finished (was a rank's output lost?); rerun the command to redo it"
            )
        for e in json.loads(meta["clips"]):
            clips[e["clip"]].update(
                frame_indices=e["frame_indices"], shard=k, rows=[e["first_row"], e["first_row"] + e["rows"]]
            )
        for e in json.loads(meta["errors"]):
            clips[e["clip"]]["error"] = e["reason"]
            errors.append(e)
        r = plan.shard_range(k)
        shards.append({"file": SHARD.format(k), "clips": [r.start, r.stop], "rows": int(meta["rows"])})
    index = {
        "format": FORMAT,
        "version": VERSION,
        "written_by": "hooked-vivit extract",
        "source": source,
        "model": plan.model_info,
        "hooks": {h: {"shape": plan.shapes[h], "dtype": plan.settings["dtype"]} for h in plan.hooks},
        "positions": {"spec": plan.positions_spec, "tokens": position_table(plan.grid, plan.tokens)},
        "rows_per_clip": len(plan.tokens),
        "shard_clips": plan.shard_clips,
        "shards": shards,
        "clips": clips,
        "errors": errors,
        "totals": {
            "clips": len(clips),
            "extracted": len(clips) - len(errors),
            "errors": len(errors),
            "rows": sum(s["rows"] for s in shards),
        },
        "world_size": world,
        "settings": plan.settings,
    }
    tmp = folder / f".{INDEX}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(json.dumps(index, indent=1) + "\n")
        os.replace(tmp, folder / INDEX)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _no_space(e):
            raise _disk_full(folder, INDEX) from e
        raise
    return index


def extract(
    model: HookedVideoTransformer,
    videos: str | Path,
    out: str | Path,
    *,
    hooks: str | Sequence[str],
    positions: str | Sequence[int] = "cls",
    dtype: str | torch.dtype | None = None,
    batch_size: int = 8,
    workers: int = 2,
    shard_clips: int | None = None,
    shard_mb: float = 1024,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Extract ``hooks`` at ``positions`` for every clip of ``videos`` (a folder or a CSV / JSONL
    manifest, see hooked_vivit.collection) into ``out`` (format: module docstring). ``model`` is a
    hooked model or a checkpoint name / directory ("actions": the shipped organism). Under torchrun every rank calls
    this with the same arguments. Returns a summary (on every rank): clips, extracted, errors,
    shards, seconds, and index (rank 0 only)."""
    t0 = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    clips = read_collection(videos)  # a bad manifest fails before anything else
    local_model = (
        Path(model).expanduser() if isinstance(model, (str, Path)) and Path(model).expanduser().is_dir() else None
    )
    with Distributed(device) as dist, ExitStack() as stack:
        reserved, error = None, None
        if dist.is_main:
            try:
                reserved = stack.enter_context(
                    OutputDir(
                        out,
                        overwrite=overwrite,
                        inputs=[videos, local_model, *(c.path for c in clips)],  # every clip: never overwritten
                        writer="hooked-vivit extract",
                    )
                )
            except Exception as e:  # noqa: BLE001  every rank learns of it
                error = e
        dist.agree(error)
        if isinstance(model, (str, Path)):
            model = load_model(str(model), dist.rank_device(device))
        elif dist.world > 1 and torch.device(device).type == "cuda":
            model = model.to(dist.rank_device(device))
        plan = _Plan(model, clips, hooks, positions, dtype, shard_clips, shard_mb, _clip_hashes(clips, dist))
        folder, error = None, None
        if dist.is_main:
            try:
                _refuse_changed_clips(reserved, plan)
                folder = stack.enter_context(reserved.resumable(plan.settings, OWNED))
                for p in folder.iterdir():
                    if _TEMP.fullmatch(p.name):
                        p.unlink()  # half-written by an interrupted run
            except Exception as e:  # noqa: BLE001
                error = e
        dist.agree(error)
        folder = Path(dist.broadcast(str(folder) if folder else None))
        processed = _extract_shards(
            model, plan, folder, dist, batch_size=batch_size, workers=workers, progress=progress and dist.is_main
        )
        dist.barrier()  # every shard exists
        index = _write_index(folder, plan, str(videos), dist.world) if dist.is_main else None
    summary = {
        "clips": len(clips),
        "shards": plan.n_shards,
        "processed_here": processed,
        "seconds": time.perf_counter() - t0,
    }
    if index is not None:
        summary.update(extracted=index["totals"]["extracted"], errors=index["errors"], index=index)
    return summary


# ---------------------------------------------------------------------------------------- reading
def read_index(out: str | Path) -> dict:
    """index.json of an extract output (checked to be one)."""
    path = Path(out).expanduser() / INDEX
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; {out} is not a finished hooked-vivit extract output") from None
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: not a hooked-vivit activations index (format {index.get('format')!r})")
    if index.get("version", 0) > VERSION:
        raise ValueError(
            f"{path}: format version {index['version']} is newer than this hooked-vivit reads ({VERSION}); upgrade"
        )
    return index


def iter_activations(
    out: str | Path, hook: str, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """One (activations, provenance) per shard, in row order, for one hook of an extract output:
    activations [rows, *shape] (the stored dtype unless ``dtype``), provenance {"clip", "token",
    "frame_slot", "row", "col"} int64 [rows] (-1 for a token with no place on the grid, CLS). The
    clip's file and sampled frames: ``read_index(out)["clips"][clip]``. An activation source for
    SAE training: ``for acts, _ in iter_activations(out, "blocks.3.hook_resid_post"): ...``."""
    from safetensors import safe_open

    index = read_index(out)
    if hook not in index["hooks"]:
        raise KeyError(f"{hook!r} was not extracted into {out}; it holds {', '.join(index['hooks'])}")
    grid = {p["token"]: p for p in index["positions"]["tokens"]}
    for shard in index["shards"]:
        with safe_open(str(Path(out).expanduser() / shard["file"]), framework="pt", device=str(device)) as f:
            acts = f.get_tensor(hook)
            tokens = f.get_tensor("row.token").cpu()
            prov = {"clip": f.get_tensor("row.clip").cpu(), "token": tokens}
        for key in ("frame_slot", "row", "col"):
            table = {t: (-1 if p[key] is None else p[key]) for t, p in grid.items()}
            prov[key] = torch.tensor([table[int(t)] for t in tokens.tolist()], dtype=torch.int64)
        yield (acts if dtype is None else acts.to(dtype)), prov


def load_activations(
    out: str | Path, hook: str, *, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every row of one hook at once: (activations [rows, *shape], provenance as iter_activations)."""
    parts = list(iter_activations(out, hook, dtype=dtype))
    if not parts:
        index = read_index(out)
        return torch.empty((0, *index["hooks"][hook]["shape"])), {
            k: torch.empty(0, dtype=torch.int64) for k in ("clip", "token", "frame_slot", "row", "col")
        }
    return torch.cat([a for a, _ in parts]), {k: torch.cat([p[k] for _, p in parts]) for k in parts[0][1]}
