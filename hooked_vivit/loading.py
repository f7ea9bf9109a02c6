"""Finding, reading and writing checkpoints (local directories or the Hugging Face hub), every
architecture in weights_conversion.CONVERTERS."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hooked_vivit.model import HookedVideoTransformer

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

_HOW_TO_GET = (
    "To use the real ViViT-B on a machine with network:\n"
    "  huggingface-cli download {name} --local-dir ./vivit-b   # or: hf download ...\n"
    "then HookedViViT.from_pretrained('./vivit-b') (or the hub id, once it is in the local cache).\n"
    "Offline, pass a local directory holding config.json and model.safetensors / pytorch_model.bin."
)


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local checkpoint directory, or a hub id resolved through the local cache, then the hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; expected a checkpoint directory (config.json + weights)")
    name = str(name_or_path)
    looks_like_repo = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_repo:
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a dependency
        raise ImportError("loading from the hub needs huggingface_hub") from e
    patterns = (["*.json", "*.safetensors"], ["*.json", "*.bin"])
    errors = []
    for local_only in (True, False):  # the cache first: works offline, costs no network
        if not local_only and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            break
        for allow in patterns:
            try:
                snap = Path(snapshot_download(name, allow_patterns=allow, local_files_only=local_only))
            except Exception as e:  # noqa: BLE001 - every hub failure becomes one clear error below
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            if any((snap / f).exists() for f in WEIGHT_FILES):
                return snap
    raise OSError(
        f"could not load {name!r}: it is not a local directory, not in the Hugging Face cache, and the hub "
        f"could not be reached ({errors[-1] if errors else 'offline mode'}).\n" + _HOW_TO_GET.format(name=name)
    )


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded safetensors, or pytorch_model.bin (read with weights_only=True)."""
    from safetensors.torch import load_file

    def load_bin(p: Path) -> dict[str, torch.Tensor]:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"could not read {p} as a PyTorch checkpoint (weights_only=True): {e}") from e
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise ValueError(
                f"{p} holds a {type(state).__name__}, expected a state dict (a dict of parameter name -> tensor)"
            )
        return state

    def load_st(p: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(p)
        except Exception as e:
            raise ValueError(f"could not read {p} as safetensors: {e}") from e

    for name, loader in (("model.safetensors", load_st), ("pytorch_model.bin", load_bin)):
        single, index = directory / name, directory / f"{name}.index.json"
        if single.exists():
            return loader(single)
        if index.exists():
            state: dict[str, torch.Tensor] = {}
            for shard in _shards(index):
                state.update(loader(shard))
            return state
    present = sorted(p.name for p in directory.iterdir())
    raise FileNotFoundError(f"no weights in {directory}: expected one of {list(WEIGHT_FILES)}, found {present}")


def _shards(index: Path) -> list[Path]:
    """The shard files a *.index.json names: each a file inside the checkpoint directory."""
    try:
        data = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{index} is not valid JSON: {e}") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f'{index} has no "weight_map"; expected {{"weight_map": {{parameter name: shard file name}}}}')
    directory = index.parent.resolve()
    shards = []
    for name in sorted(set(weight_map.values())):
        shard = (directory / str(name)).resolve()
        if not isinstance(name, str) or shard.parent != directory:
            raise ValueError(
                f"{index} names the shard {name!r}, which is not a file in {index.parent}; shards must sit beside the index"
            )
        if not shard.is_file():
            raise FileNotFoundError(f"{index} names the shard {name!r}, but {shard} is missing")
        shards.append(shard)
    return shards


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {directory}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} holds a JSON {type(config).__name__}, expected an object (a transformers VivitConfig)"
        )
    from weights_conversion import CONVERTERS

    if config.get("model_type") not in CONVERTERS:
        raise ValueError(
            f"{path} has model_type {config.get('model_type')!r}, expected {' or '.join(map(repr, CONVERTERS))} (a transformers "
            "VivitConfig or VideoMAEConfig with hidden_size, num_hidden_layers, image_size, num_frames, tubelet_size, ...)"
        )
    _read_preprocessor_config(directory, config)
    return config


def _read_preprocessor_config(directory: Path, config: dict[str, Any]) -> None:
    """The checkpoint's pixel normalisation (preprocessor_config.json: image_mean, image_std,
    rescale_factor, do_rescale), stored under ``config["preprocessor"]`` for the config class."""
    path = directory / "preprocessor_config.json"
    if not path.exists():
        return
    try:
        pre = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if isinstance(pre, dict):
        config["preprocessor"] = {
            k: pre[k] for k in ("image_mean", "image_std", "rescale_factor", "do_rescale", "offset") if k in pre
        }


def load_checkpoint(name_or_path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    directory = resolve_checkpoint(name_or_path)
    return read_config(directory), read_state_dict(directory)


def save_checkpoint(model: HookedVideoTransformer, path: Path, *, layout: str, overwrite: bool) -> Path:
    """config.json + model.safetensors, written to a temporary sibling and renamed into place."""
    from safetensors.torch import save_file

    from hooked_vivit.output_dir import output_directory
    from weights_conversion import converter

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if layout != "hooked":
        state = converter(model.model_type).to_hf(state, model.cfg, layout=layout)
    with output_directory(path, overwrite=overwrite, writer="save_pretrained") as tmp:
        config = model.cfg.to_hf_config_dict()
        config["torch_dtype"] = str(model.cfg.dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            tmp / "model.safetensors",
            metadata={"format": "pt", "layout": layout},
        )
    return path


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (hex) over every parameter and buffer of ``model``: each one's name, dtype, shape and bytes,
    in name order. Ties an output (extract's shards, a study summary, an SAE's provenance) to the exact
    weights it came from: any changed value, however small, changes it; the device does not."""
    import hashlib

    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        digest.update(json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode())
        digest.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()
