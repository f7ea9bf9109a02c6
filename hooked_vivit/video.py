"""Video -> pixels: read clips with OpenCV, sample frames, and preprocess exactly as
``transformers.VivitImageProcessor`` does.

Frames are uint8 RGB arrays [T, H, W, 3] throughout; ``preprocess`` returns float32 pixel values
[1, T, 3, crop, crop] in HF's layout, ready for ``HookedViViT``.

Preprocessing (as VivitImageProcessor): resize the shortest edge to ``shortest_edge`` with Pillow's
bilinear filter (antialiased when shrinking; the long edge becomes ``int(shortest_edge * long /
short)``), centre-crop, rescale by 1/127.5 with offset (-> [-1, 1]), then normalise with mean = std
= 0.5 (-> [-3, 1]; yes, ViViT's processor applies both). The processor class defaults to
``shortest_edge=256``; ``google/vivit-b-16x2-kinetics400``'s preprocessor_config.json uses 224,
which is this module's default.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from jaxtyping import Float, UInt8
from PIL import Image

from hooked_vivit.tensor_types import PixelValues

Frames = UInt8[np.ndarray, "frames height width 3"]

# VivitImageProcessor's constants.
RESCALE_FACTOR = 1 / 127.5
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5


class VideoReadError(ValueError):
    """A video file that cannot be read; the message names the file and the cause."""


# ---------------------------------------------------------------------------------------- reading
def sample_indices(
    n_available: int,
    num_frames: int,
    *,
    sampling: Literal["uniform", "strided"] = "uniform",
    frame_sample_rate: int = 1,
    start_index: int = 0,
    pad: Literal["repeat_last", "loop"] = "repeat_last",
) -> np.ndarray:
    """Which frames to take from a clip of ``n_available`` frames.

    - ``uniform`` (default): ``num_frames`` indices spread evenly over the whole clip.
    - ``strided`` (HF's example style): ``start_index, start_index + rate, ...``.
    When the clip is too short the missing frames repeat the last real one (``repeat_last``) or
    wrap around to the start (``loop``), with a warning.
    """
    _check_sampling(num_frames, sampling, frame_sample_rate, start_index, pad)
    if n_available < 1:
        raise ValueError("the clip has no frames")
    if sampling == "uniform":
        if n_available >= num_frames:
            return np.linspace(0, n_available - 1, num_frames).round().astype(np.int64)
        wanted = np.arange(num_frames)
    else:
        if start_index >= n_available:
            raise ValueError(f"start_index {start_index} is past the end of a {n_available}-frame clip")
        wanted = start_index + np.arange(num_frames) * frame_sample_rate
        if wanted[-1] < n_available:
            return wanted
    real = wanted[wanted < n_available]
    warnings.warn(
        f"clip has {n_available} frames, fewer than the {num_frames} asked for"
        + (f" at stride {frame_sample_rate} from {start_index}" if sampling == "strided" else "")
        + f"; padding by {pad!r}",
        stacklevel=3,
    )
    missing = num_frames - len(real)
    fill = np.full(missing, real[-1]) if pad == "repeat_last" else real[np.arange(missing) % len(real)]
    return np.concatenate([real, fill]).astype(np.int64)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_sampling(num_frames: Any, sampling: Any, frame_sample_rate: Any, start_index: Any, pad: Any) -> None:
    """Every option checked up front, whether or not the clip turns out long enough to need it."""
    for name, value, low in (
        ("num_frames", num_frames, 1),
        ("frame_sample_rate", frame_sample_rate, 1),
        ("start_index", start_index, 0),
    ):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if sampling not in ("uniform", "strided"):
        raise ValueError(f"sampling must be 'uniform' or 'strided', got {sampling!r}")
    if pad not in ("repeat_last", "loop"):
        raise ValueError(f"pad must be 'repeat_last' or 'loop', got {pad!r}")


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    # OpenCV decodes to BGR; grayscale becomes 3 equal channels, an alpha channel is dropped.
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 1:
        return cv2.cvtColor(frame[..., 0], cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def decode_frames(path: Path, keep: set[int] | None) -> tuple[dict[int, np.ndarray], int]:
    """Decode sequentially (seeking is unreliable across codecs); keep the listed frames."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoReadError(f"{path}: OpenCV cannot open it (not a video, or a codec this OpenCV build lacks)")
    kept: dict[int, np.ndarray] = {}
    n = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if keep is None or n in keep:
                kept[n] = _to_rgb(frame)
            n += 1
    finally:
        cap.release()
    return kept, n


def count_frames(path: str | Path) -> int:
    """Decodable frames (decodes the clip; container headers can be wrong)."""
    return decode_frames(existing_file(path), keep=set())[1]


def existing_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file")
    if path.is_dir():
        raise VideoReadError(f"{path}: is a directory, expected a video file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: the file is empty")
    return path


def load_video(
    path: str | Path,
    num_frames: int,
    *,
    sampling: Literal["uniform", "strided"] = "uniform",
    frame_sample_rate: int = 1,
    start_index: int = 0,
    pad: Literal["repeat_last", "loop"] = "repeat_last",
) -> Frames:
    """Read ``num_frames`` RGB frames, uint8 [T, H, W, 3]. See ``sample_indices`` for the options.

    Grayscale video becomes three equal channels, RGBA loses its alpha. A file that is missing,
    not a video, or has no decodable frame raises an error naming the file and the cause.
    """
    path = existing_file(path)
    _check_sampling(num_frames, sampling, frame_sample_rate, start_index, pad)
    cap = cv2.VideoCapture(str(path))
    opened = cap.isOpened()
    reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if opened else 0
    cap.release()
    if not opened:
        raise VideoReadError(f"{path}: OpenCV cannot open it (not a video, or a codec this OpenCV build lacks)")
    opts = dict(sampling=sampling, frame_sample_rate=frame_sample_rate, start_index=start_index, pad=pad)
    kept: dict[int, np.ndarray] = {}
    n, guess = 0, None
    if reported > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short clip warns below, once, with the true count
            guess = (
                sample_indices(reported, num_frames, **opts)
                if (sampling != "strided" or start_index < reported)
                else None
            )
        if guess is not None:
            kept, n = decode_frames(path, set(guess.tolist()))
    if n == 0 and (reported <= 0 or guess is None):
        kept, n = decode_frames(path, None)  # no usable frame count, or a start past it: count every frame
    if n == 0:
        raise VideoReadError(f"{path}: opened, but no frame could be decoded (broken file or unsupported codec)")
    if sampling == "strided" and start_index >= n:
        raise ValueError(
            f"{path}: start_index {start_index} is past the end of this {n}-frame clip (frames 0..{n - 1})"
        )
    indices = sample_indices(n, num_frames, **opts)
    if not set(indices.tolist()) <= kept.keys():
        kept, _ = decode_frames(path, set(indices.tolist()))  # the header's frame count was wrong
    return np.stack([kept[i] for i in indices])


# ---------------------------------------------------------------------------------------- writing
def write_video(frames: Frames, path: str | Path, fps: float = 25.0) -> Path:
    """Write uint8 RGB frames [T, H, W, 3] as an mp4 (mp4v). The file appears whole or not at all.

    Height and width must be even: mp4v silently drops an odd last row or column."""
    frames = _check_frames(frames)
    path = Path(path).expanduser()
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"{path}: write_video writes .mp4 files")
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float, np.integer, np.floating))
        or not math.isfinite(fps)
        or fps <= 0
    ):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(
            f"{path}: frames are {W}x{H} pixels (width x height); mp4 (mp4v) stores only even sizes and would drop the odd "
            f"row/column, so crop or pad to {W - W % 2}x{H - H % 2} or {W + W % 2}x{H + H % 2} first"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.mp4"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the user's umask, not mkstemp's 0600
    try:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (W, H))
        if not writer.isOpened():
            raise OSError(f"{path}: OpenCV could not open an mp4v writer")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        if tmp.stat().st_size == 0:
            raise OSError(f"{path}: the encoder wrote nothing")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------- preprocessing
def _check_frames(frames: Any) -> Frames:
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f) for f in frames])
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a uint8 array [T, H, W, 3], got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] (0..255 RGB), got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames is empty (0 frames)")
    return frames


def resized_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(H, W) after VivitImageProcessor's shortest-edge resize."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def _pair(size: int | Sequence[int], what: str = "crop_size") -> tuple[int, int]:
    """A size in pixels: one positive integer (square) or (height, width)."""
    hw = (size, size) if _is_int(size) else tuple(size) if isinstance(size, (list, tuple)) else None
    if hw is None or len(hw) != 2 or not all(_is_int(v) and v > 0 for v in hw):
        raise ValueError(f"{what} must be a positive integer or a (height, width) pair of them, got {size!r}")
    return int(hw[0]), int(hw[1])


def model_view(
    frames: Frames | Sequence[np.ndarray],
    *,
    crop_size: int | Sequence[int] = 224,
    shortest_edge: int | None = None,
    config: Any = None,
) -> Frames:
    """uint8 RGB frames [T, H, W, 3] -> the uint8 frames [T, crop_h, crop_w, 3] the model sees:
    VivitImageProcessor's shortest-edge resize and centre crop, before the rescale and normalisation.

    ``config`` (a HookedViViTConfig, or a model) sets the crop size from the model's image size;
    ``shortest_edge`` defaults to the crop's shorter side. Idempotent: a model view is its own view.
    """
    frames = _check_frames(frames)
    if config is not None:
        cfg = getattr(config, "cfg", config)
        if getattr(cfg, "n_channels", 3) != 3:
            raise ValueError(
                f"this model takes {cfg.n_channels} channels per frame; preprocess makes RGB (3) pixel values, "
                f"so build [batch, frames, {cfg.n_channels}, H, W] for it yourself"
            )
        crop_size = tuple(cfg.image_size)
    crop_h, crop_w = _pair(crop_size)
    if shortest_edge is not None and not (_is_int(shortest_edge) and shortest_edge > 0):
        raise ValueError(f"shortest_edge must be a positive integer, got {shortest_edge!r}")
    shortest_edge = shortest_edge or min(crop_h, crop_w)
    T, H, W, _ = frames.shape
    new_h, new_w = resized_size(H, W, shortest_edge)
    if new_h < crop_h or new_w < crop_w:
        raise ValueError(
            f"resizing {H}x{W} to shortest edge {shortest_edge} gives {new_h}x{new_w}, smaller than the "
            f"{crop_h}x{crop_w} crop; use shortest_edge >= {max(crop_h, crop_w)}"
        )
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    out = np.empty((T, crop_h, crop_w, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        if (new_h, new_w) != (H, W):
            # Pillow's bilinear, exactly the processor's resize (antialiased when shrinking).
            frame = np.asarray(
                Image.fromarray(frame).resize((new_w, new_h), resample=Image.BILINEAR, reducing_gap=None)
            )
        out[i] = frame[top : top + crop_h, left : left + crop_w]
    return out


def preprocess(
    frames: Frames | Sequence[np.ndarray],
    *,
    crop_size: int | Sequence[int] = 224,
    shortest_edge: int | None = None,
    config: Any = None,
) -> PixelValues:
    """uint8 RGB frames [T, H, W, 3] -> float32 pixel values [1, T, 3, crop_h, crop_w], equal to
    ``VivitImageProcessor(size={"shortest_edge": shortest_edge}, crop_size=...)``: ``model_view``,
    then ``normalize``.
    """
    view = model_view(frames, crop_size=crop_size, shortest_edge=shortest_edge, config=config)
    cfg = getattr(config, "cfg", config)
    return normalize(torch.from_numpy(view), config=cfg).unsqueeze(0)


def _pixel_constants(config: Any) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(mean [3, 1, 1], std [3, 1, 1], rescale factor, offset) from a config (or model); ViViT's without one."""
    cfg = getattr(config, "cfg", config)
    if cfg is None or not hasattr(cfg, "image_mean"):
        return (
            torch.tensor(IMAGE_MEAN).expand(3)[:, None, None],
            torch.tensor(IMAGE_STD).expand(3)[:, None, None],
            RESCALE_FACTOR,
            1.0,
        )
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32).expand(3)[:, None, None]
    std = torch.tensor(cfg.image_std, dtype=torch.float32).expand(3)[:, None, None]
    return mean, std, float(cfg.rescale_factor), 1.0 if cfg.rescale_offset else 0.0


def normalize(
    frames: UInt8[torch.Tensor, "*batch frames height width 3"], *, config: Any = None
) -> Float[torch.Tensor, "*batch frames 3 height width"]:
    """uint8 RGB frames (channels last) -> pixel values (channels first): rescale, then normalise
    with the config's mean and std (no resize, no crop). Without a config, ViViT's: 1/127.5 with
    offset, then mean = std = 0.5, as VivitImageProcessor."""
    mean, std, factor, offset = _pixel_constants(config)
    x = frames.movedim(-1, -3).float()
    return ((x * factor - offset - mean) / std).contiguous()


def stack_videos(videos: Iterable[Frames], **preprocess_kwargs: Any) -> PixelValues:
    """Several clips (same frame count) -> one batch [B, T, 3, crop_h, crop_w]."""
    batch = [preprocess(v, **preprocess_kwargs) for v in videos]
    if not batch:
        raise ValueError("no videos to stack")
    counts = {b.shape[1] for b in batch}
    if len(counts) > 1:
        raise ValueError(f"videos have different frame counts {sorted(counts)}; sample them to one count first")
    return torch.cat(batch)


def unnormalize(pixel_values: torch.Tensor, *, config: Any = None) -> np.ndarray:
    """Pixel values [T, 3, H, W] (or [1, T, 3, H, W]) back to uint8 frames [T, H, W, 3], for display
    (``config``: the model's preprocessing constants; ViViT's without one)."""
    mean, std, factor, offset = _pixel_constants(config)
    x = pixel_values.detach().float().cpu()
    if x.ndim == 5:
        x = x[0]
    x = ((x * std + mean + offset) / factor).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()
