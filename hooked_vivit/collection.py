"""Video collections for ``extract`` and ``study --pairs``: a folder of clips or a manifest, decoded
with OpenCV in ``DataLoader`` workers, and the ``torch.distributed`` plumbing both commands share.

A collection is a list of ``Clip`` in a fixed order: a folder's video files sorted by their path
relative to the folder (label = the sub-folder a clip lies in, as in Kinetics' class/clip.mp4), or a
manifest's rows in file order. Manifests are CSV (a header row) or JSONL (one object per line) with

    path    the video file; relative paths are relative to the manifest's folder   (required)
    label   any text, kept in the provenance                                       (optional)
    pair    a pair id: the two clips of a minimal pair share it                    (study --pairs)
    role    positive | negative: which clip of the pair it is                      (study --pairs)
    start   first second of the clip to use (default 0)                            (optional)
    end     second at which the used part ends, exclusive (default: the clip's end) (optional)

A missing or undecodable file is not an error of the manifest: the run reports it (file and
reason) and goes on without it.

Distributed: under ``torchrun`` (WORLD_SIZE, RANK, LOCAL_RANK in the environment) ``Distributed``
joins the process group (gloo on CPU, NCCL on CUDA); otherwise it is a world of one, and every
collective is the identity, so a single process runs the same code.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hooked_vivit.video import VideoReadError, decode_frames, existing_file, preprocess, sample_indices

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
MANIFEST_COLUMNS = ("path", "label", "pair", "role", "start", "end")
ROLES = ("positive", "negative")


@dataclass(frozen=True)
class Clip:
    index: int  # position in the collection
    file: str  # as the manifest names it (or relative to the folder)
    path: str  # the file to open
    label: str | None = None
    pair: str | None = None
    role: str | None = None
    start: float | None = None  # seconds
    end: float | None = None

    def provenance(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "path" and v is not None}


class ManifestError(ValueError):
    """A manifest that cannot be read as one (the message names the file, the line and what was expected)."""


# ---------------------------------------------------------------------------------------- reading collections
def read_collection(source: str | Path) -> list[Clip]:
    """The clips of a folder (recursively, sorted by relative path) or of a CSV / JSONL manifest."""
    source = Path(source).expanduser()
    if source.is_dir():
        files = sorted(
            (p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
            key=lambda p: p.relative_to(source).as_posix(),
        )
        if not files:
            raise ManifestError(f"{source}: no video files in this folder (looked for {', '.join(VIDEO_SUFFIXES)})")
        clips = []
        for i, p in enumerate(files):
            rel = p.relative_to(source)
            clips.append(
                Clip(i, rel.as_posix(), str(p), label=rel.parent.as_posix() if rel.parent != Path(".") else None)
            )
        return clips
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such folder of videos or manifest file")
    suffix = source.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ManifestError(f"{source}: expected a folder of videos, a .csv or a .jsonl manifest")
    try:
        rows = _csv_rows(source) if suffix == ".csv" else _jsonl_rows(source)
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"{source}: not UTF-8 text (byte {e.start} cannot be decoded); save the manifest as UTF-8"
        ) from None
    clips = [_clip(source, line, i, row) for i, (line, row) in enumerate(rows)]
    if not clips:
        raise ManifestError(f"{source}: the manifest lists no clips")
    return clips


def _csv_rows(source: Path) -> list[tuple[int, dict]]:
    with open(source, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a byte-order mark is not a column name
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ManifestError(
                f"{source}: empty CSV; expected a header row with columns {', '.join(MANIFEST_COLUMNS)}"
            )
        _check_columns(source, 1, [c.strip() for c in reader.fieldnames])
        out = []
        for row in reader:
            cells = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k is not None}
            if None in row:
                raise ManifestError(
                    f"{source}, line {reader.line_num}: more cells than the header's {len(reader.fieldnames)} columns"
                )
            if any(cells.values()):  # blank lines carry nothing
                out.append((reader.line_num, {k: v for k, v in cells.items() if v not in ("", None)}))
        return out


def _jsonl_rows(source: Path) -> list[tuple[int, dict]]:
    out = []
    for line_no, line in enumerate(source.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ManifestError(f"{source}, line {line_no}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise ManifestError(
                f"{source}, line {line_no}: expected one JSON object per line, got {type(row).__name__}"
            )
        _check_columns(source, line_no, list(row))
        out.append((line_no, {k: v for k, v in row.items() if v is not None and v != ""}))
    return out


def _check_columns(source: Path, line: int, columns: list[str]) -> None:
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if unknown:
        raise ManifestError(
            f"{source}, line {line}: unknown column(s) {', '.join(map(repr, unknown))}; expected {', '.join(MANIFEST_COLUMNS)}"
        )


def _clip(source: Path, line: int, index: int, row: dict) -> Clip:
    where = f"{source}, line {line}"
    if "path" not in row:
        raise ManifestError(f"{where}: no path (every row names its video file)")
    file = str(row["path"])
    path = Path(file).expanduser()
    if not path.is_absolute():
        path = source.parent / path
    role = row.get("role")
    if role is not None and role not in ROLES:
        raise ManifestError(f"{where}: role {role!r}; expected positive or negative")
    times = {}
    for key in ("start", "end"):
        if key in row:
            try:
                value = float(row[key])
            except (TypeError, ValueError):
                raise ManifestError(f"{where}: {key} {row[key]!r} is not a number of seconds") from None
            if not math.isfinite(value) or value < 0:
                raise ManifestError(f"{where}: {key} must be a finite number of seconds >= 0, got {row[key]!r}")
            times[key] = value
    if "start" in times and "end" in times and times["end"] <= times["start"]:
        raise ManifestError(f"{where}: end {times['end']:g} s is not after start {times['start']:g} s")
    text = lambda k: None if row.get(k) is None else str(row[k])  # noqa: E731
    return Clip(index, file, str(path), text("label"), text("pair"), role, times.get("start"), times.get("end"))


def collection_digest(clips: Sequence[Clip]) -> str:
    """A hash of what a collection asks for (files, labels, pairs, times): ties a resumed run to its inputs."""
    return hashlib.sha256(json.dumps([c.provenance() for c in clips], sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str | None:
    """sha256 (hex) of a file's bytes, read in 1 MiB pieces; None if it cannot be read (a missing file,
    which the run reports as a skipped clip)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def group_pairs(clips: Sequence[Clip], source: Any = "the manifest") -> list[tuple[str, Clip, Clip]]:
    """(pair id, positive, negative) in the order each pair first appears; every pair needs exactly
    one clip of each role."""
    pairs: dict[str, dict[str, Clip]] = {}
    for c in clips:
        if c.pair is None or c.role is None:
            raise ManifestError(
                f"{source}: {c.file} has no {'pair id' if c.pair is None else 'role'}; study --pairs needs "
                "columns pair and role (positive / negative) on every row"
            )
        roles = pairs.setdefault(c.pair, {})
        if c.role in roles:
            raise ManifestError(f"{source}: pair {c.pair!r} has two {c.role} clips ({roles[c.role].file}, {c.file})")
        roles[c.role] = c
    incomplete = [p for p, r in pairs.items() if len(r) != 2]
    if incomplete:
        raise ManifestError(
            f"{source}: pair(s) {', '.join(map(repr, incomplete[:5]))} lack a "
            f"{'negative' if 'positive' in pairs[incomplete[0]] else 'positive'} clip; each pair needs one of each role"
        )
    return [(p, r["positive"], r["negative"]) for p, r in pairs.items()]


# ---------------------------------------------------------------------------------------- decoding
def read_clip(
    path: str | Path, num_frames: int, start: float | None = None, end: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB frames [T, H, W, 3], the frame indices taken): ``num_frames`` spread evenly over the
    clip, or over its part from ``start`` to ``end`` seconds. Without start and end these are exactly
    ``hooked_vivit.video.load_video``'s frames (uniform sampling; a short clip repeats its last frame)."""
    path = existing_file(path)
    cap = cv2.VideoCapture(str(path))
    opened = cap.isOpened()
    reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if opened else 0
    fps = float(cap.get(cv2.CAP_PROP_FPS)) if opened else 0.0
    cap.release()
    if not opened:
        raise VideoReadError(f"{path}: OpenCV cannot open it (not a video, or a codec this OpenCV build lacks)")
    first, stop = 0, None
    if start is not None or end is not None:
        if not (fps > 0 and math.isfinite(fps)):
            raise VideoReadError(f"{path}: the file states no frame rate, so start/end seconds cannot be placed")
        first = round((start or 0.0) * fps)
        stop = round(end * fps) if end is not None else None

    def wanted(n: int) -> np.ndarray:
        last = n if stop is None else min(stop, n)
        if first >= last:
            raise VideoReadError(
                f"{path}: start {start or 0:g} s (frame {first}) is past the end of the used part "
                f"(the clip has {n} frames at {fps:g} fps)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short clip is padded; the frame indices show it
            return first + sample_indices(last - first, num_frames)

    kept, n = {}, 0
    if reported > 0 and first < reported:
        kept, n = decode_frames(path, set(wanted(reported).tolist()))
    if n == 0:
        kept, n = decode_frames(path, None)  # no usable frame count: decode everything
    if n == 0:
        raise VideoReadError(f"{path}: opened, but no frame could be decoded (broken file or unsupported codec)")
    indices = wanted(n)
    if not set(indices.tolist()) <= kept.keys():
        kept, _ = decode_frames(path, set(indices.tolist()))  # the header's frame count was wrong
    return np.stack([kept[i] for i in indices]), indices


class ClipDataset(torch.utils.data.Dataset):
    """Item i of ``clips``: {"clip", "pixels" [T, 3, H, W] preprocessed for ``config``, "frames", "size"
    (the file's native width, height)}, or
    {"clip", "error"} for a file that cannot be used (the reason names the file)."""

    def __init__(self, clips: Sequence[Clip], config: Any):
        self.clips = list(clips)
        self.config = getattr(config, "cfg", config)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        clip = self.clips[i]
        try:
            frames, indices = read_clip(clip.path, self.config.num_frames, clip.start, clip.end)
            pixels = preprocess(frames, config=self.config)[0]
        except (OSError, ValueError, cv2.error) as e:
            return {"clip": clip.index, "error": f"{type(e).__name__}: {e}"}
        size = (int(frames.shape[2]), int(frames.shape[1]))  # native (width, height), before preprocessing
        return {"clip": clip.index, "pixels": pixels, "frames": indices.tolist(), "size": size}


def collate(items: list[dict]) -> dict:
    ok = [it for it in items if "error" not in it]
    return {
        "clips": [it["clip"] for it in ok],
        "frames": [it["frames"] for it in ok],
        "sizes": [it["size"] for it in ok],
        "pixels": torch.stack([it["pixels"] for it in ok]) if ok else None,
        "errors": [(it["clip"], it["error"]) for it in items if "error" in it],
    }


def _quiet_worker(_: int) -> None:
    cv2.setNumThreads(1)  # one decoder thread per worker: the workers are the parallelism
    warnings.simplefilter("ignore")


def clip_loader(
    clips: Sequence[Clip], config: Any, batches: list[list[int]], *, workers: int = 2, pin_memory: bool = False
) -> Iterator[dict]:
    """Decoded batches in the given order: ``batches`` lists positions in ``clips``; ``workers``
    processes decode ahead of the model (0: decode in this process)."""
    loader = torch.utils.data.DataLoader(
        ClipDataset(clips, config),
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=workers,
        worker_init_fn=_quiet_worker if workers else None,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


# ---------------------------------------------------------------------------------------- torch.distributed
class Distributed:
    """This process's place in a torchrun job (rank, world size), and the few collectives the
    commands need. Outside torchrun, or with WORLD_SIZE=1, a world of one: no process group.

    The process group is joined on ``__enter__`` (gloo for CPU, NCCL for CUDA) unless one exists
    already, and left on ``__exit__`` only if it was joined here. The timeout (default 12 h, env
    HOOKED_VIVIT_DIST_TIMEOUT_S) bounds how long a rank that finished early waits for the others."""

    def __init__(self, device: str = "cpu"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(device)
        self._joined = False

    def __enter__(self) -> Distributed:
        import torch.distributed as dist

        if self.world > 1 and not dist.is_initialized():
            timeout = datetime.timedelta(seconds=float(os.environ.get("HOOKED_VIVIT_DIST_TIMEOUT_S", 12 * 3600)))
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend=backend, timeout=timeout)
            self._joined = True
        if self.world > 1:
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
        return self

    def __exit__(self, *exc) -> None:
        import torch.distributed as dist

        if self._joined and dist.is_initialized():
            dist.destroy_process_group()
            self._joined = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rank_device(self, device: str) -> str:
        """``cuda`` without an index means this rank's GPU (LOCAL_RANK) under torchrun."""
        d = torch.device(device)
        return f"cuda:{self.local_rank}" if d.type == "cuda" and d.index is None and self.world > 1 else device

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, error: BaseException | None) -> None:
        """All ranks call this at the same point: a rank that failed re-raises its error, the others
        raise one naming it, so no rank waits for a collective that never comes."""
        errors = self.all_gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(r, e) for r, e in enumerate(errors) if e]
        if failed:
            raise ValueError(f"rank {failed[0][0]} failed: {failed[0][1]}")
