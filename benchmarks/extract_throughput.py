"""Extraction throughput (issue 20): ``python -m benchmarks.extract_throughput [--out DIR]``.

For the organism and a ViViT-B-shaped model (random weights), on clips written with OpenCV:
- plain forward: the model's clip rate on pixels decoded beforehand (inference_mode, logits), the
  ceiling extraction is measured against;
- extract: ``hooked_vivit.extract.extract`` over the folder (decoding and preprocessing in DataLoader
  workers, hooks at the last block so the whole network runs, shards written), clip rate and ratio;
- scaling: the ``hooked-vivit extract`` command in one process vs ``torchrun --nproc-per-node 2``
  (each rank one thread), clip rate from the command's own seconds (model load and index included).
Round-robin repetitions, median kept. Writes extract_throughput.json / .md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    # name: (model factory, source clip frames, source H, W, hooks at the last block, batch size)
    "organism": dict(frames=24, height=128, width=160, hook="blocks.3.hook_resid_post", batch=8),
    "vivit-b": dict(frames=40, height=256, width=320, hook="blocks.11.hook_resid_post", batch=1),
}


def make_model(name: str):
    from hooked_vivit import HookedViViT, HookedViViTConfig
    from hooked_vivit.extract import load_model

    if name == "organism":
        return load_model("actions")
    cfg = HookedViViTConfig(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_mlp=3072,
        num_frames=32,
        image_size=(224, 224),
        tubelet_size=(2, 16, 16),
        n_classes=400,
        model_name="vivit-b-shape-random",
    )
    model = HookedViViT(cfg)
    model.init_weights(seed=0)
    return model


def write_clips(folder: Path, n: int, frames: int, height: int, width: int) -> None:
    from hooked_vivit.video import write_video

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    for i in range(n):  # cheap to make, real to decode: a moving pattern plus noise
        clip = np.roll(base, shift=i * 3, axis=2) // 2 + rng.integers(0, 128, base.shape, dtype=np.uint8)
        write_video(clip, folder / f"clip{i:04d}.mp4")


def plain_forward_rate(model, pixels: list[torch.Tensor], batch: int) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            model(torch.cat(pixels[i : i + batch]))
    return len(pixels) / (time.perf_counter() - t0)


def extract_rate(model, folder: Path, out: Path, hook: str, batch: int, workers: int, positions: str = "cls") -> float:
    from hooked_vivit.extract import extract

    t0 = time.perf_counter()
    summary = extract(
        model,
        folder,
        out,
        hooks=hook,
        positions=positions,
        batch_size=batch,
        workers=workers,
        progress=False,
        overwrite=True,
    )
    seconds = time.perf_counter() - t0
    assert summary["extracted"] == summary["clips"], summary["errors"]
    return summary["clips"] / seconds


def cli_rate(args: list[str], nproc: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "hooked_vivit.cli", "extract", *args]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "hooked_vivit.cli",
            "extract",
            *args,
        ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    m = re.search(r"(\d+) of (\d+) clips in \d+ shard\(s\) \(([\d.]+) s\)", proc.stdout)
    return int(m.group(1)) / float(m.group(3))


def write_markdown(results: dict, out: Path, workers: int) -> list[str]:
    lines = [
        "# Extraction throughput (issue 20)",
        "",
        f"CPU, {results['machine']['cpus']} cores (load average {results['machine']['load_avg_start'][0]:.1f} "
        f"at the start, {results['machine']['load_avg_end'][0]:.1f} at the end: a machine shared with other jobs), "
        f"{workers} decoding workers. Clip rates in clips/s, median of round-robin repeats.",
        "",
        "| model | clips | plain forward | extract (CLS) | ratio | extract (all tokens) | ratio | 1 process | 2 processes | 1 -> 2 | decode CPU s/clip | forward CPU s/clip |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["shapes"].items():
        f = lambda k, fmt=".3g": format(r[k], fmt) if k in r else "-"  # noqa: E731
        lines.append(
            f"| {name} | {r['clips']} | {f('plain_forward_clips_per_s')} | {f('extract_cls_clips_per_s')} | {f('ratio_cls')} | "
            f"{f('extract_all_positions_clips_per_s')} | {f('ratio_all_positions')} | {f('cli_1_process_clips_per_s')} | "
            f"{f('cli_2_processes_clips_per_s')} | {f('scaling_1_to_2')} | {f('decode_cpu_s_per_clip', '.3f')} | {f('forward_cpu_s_per_clip', '.3f')} |"
        )
    (out / "extract_throughput.md").write_text("\n".join(lines) + "\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--clips", type=int, nargs=2, default=[96, 4], metavar=("ORGANISM", "VIVIT_B"), help="clips per shape"
    )
    p.add_argument("--repeats", type=int, nargs=2, default=[3, 1], metavar=("ORGANISM", "VIVIT_B"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    from hooked_vivit.collection import read_clip
    from hooked_vivit.video import preprocess

    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_start": os.getloadavg(),
        },
        "workers": args.workers,
        "shapes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.shapes:
            s = SHAPES[name]
            n, reps = (args.clips[0], args.repeats[0]) if name == "organism" else (args.clips[1], args.repeats[1])
            folder = tmp / f"{name}-clips"
            write_clips(folder, n, s["frames"], s["height"], s["width"])
            model = make_model(name)
            t0 = time.process_time()
            pixels = [
                preprocess(read_clip(f, model.cfg.num_frames)[0], config=model.cfg) for f in sorted(folder.iterdir())
            ]
            decode_cpu = (time.process_time() - t0) / n  # one thread: what each worker spends per clip
            t0 = time.process_time()
            plain_forward_rate(model, pixels[: s["batch"]], s["batch"])
            forward_cpu = (time.process_time() - t0) / s["batch"]
            plain, ext, ext_all = [], [], []
            for _ in range(reps):  # round robin
                plain.append(plain_forward_rate(model, pixels, s["batch"]))
                ext.append(extract_rate(model, folder, tmp / f"{name}-out", s["hook"], s["batch"], args.workers))
                if name == "organism":
                    ext_all.append(
                        extract_rate(
                            model, folder, tmp / f"{name}-out-all", s["hook"], s["batch"], args.workers, positions="all"
                        )
                    )
            row = {
                "clips": n,
                "source": f"{s['frames']} frames {s['width']}x{s['height']} mp4",
                "batch": s["batch"],
                "hook": s["hook"],
                "plain_forward_clips_per_s": statistics.median(plain),
                "extract_cls_clips_per_s": statistics.median(ext),
                "ratio_cls": statistics.median(ext) / statistics.median(plain),
                "repeats": reps,
                "decode_cpu_s_per_clip": decode_cpu,
                "forward_cpu_s_per_clip": forward_cpu,
            }
            if ext_all:
                row.update(
                    extract_all_positions_clips_per_s=statistics.median(ext_all),
                    ratio_all_positions=statistics.median(ext_all) / statistics.median(plain),
                )
            if not args.no_scaling:
                ckpt = tmp / f"{name}-ckpt"
                if name == "organism":
                    model_arg = "actions"
                else:
                    model.save_pretrained(ckpt)
                    model_arg = str(ckpt)
                cli = [
                    "--model",
                    model_arg,
                    "--videos",
                    str(folder),
                    "--hooks",
                    s["hook"],
                    "--batch-size",
                    str(s["batch"]),
                    "--shard-clips",
                    str(max(1, n // 8)),
                    "--quiet",
                    "--overwrite",
                ]
                one = cli_rate([*cli, "--workers", str(args.workers), "--out", str(tmp / f"{name}-cli1")], 1)
                two = cli_rate([*cli, "--workers", "1", "--out", str(tmp / f"{name}-cli2")], 2)
                row.update(cli_1_process_clips_per_s=one, cli_2_processes_clips_per_s=two, scaling_1_to_2=two / one)
            results["shapes"][name] = row
            print(name, json.dumps(row, indent=1), flush=True)
    results["machine"]["load_avg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "extract_throughput.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = write_markdown(results, args.out, args.workers)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
