"""SAE activation source throughput against the plain forward, tokens per second.

    python -m benchmarks.sae_throughput --out benchmarks/results

The shipped organism, the same rendered clips held in memory for every case (rendering is not
timed: both sides read the same pixels), the cases timed round-robin, median kept, in process CPU
seconds (the 2-core machine is shared; CPU time is what contention does not inflate) and wall
seconds. Cases: the plain forward (logits) over the clips; the ActivationSource (hook capture, the
shuffle buffer, provenance, SAELens-sized batches) on blocks.2.hook_resid_post (the forward stops
after block 2) and on the last block's resid_post (the whole forward runs: the extraction's own
overhead). Goal: source >= 0.8 x the plain forward's token rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from hooked_vivit import organism
from hooked_vivit.sae.activations import SAE_SEEDS, ActivationSource, SyntheticClips


class InMemory(Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--clip-batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model = organism.load()
    rendered = SyntheticClips(model.cfg, args.clips, seed0=SAE_SEEDS["eval"])
    x = torch.stack([rendered[i][0] for i in range(len(rendered))])
    data = InMemory(x)
    n_tokens = args.clips * model.cfg.n_ctx
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"

    def plain():
        with torch.inference_mode():
            for i in range(0, len(x), args.clip_batch):
                model(x[i : i + args.clip_batch])

    def source(hook):
        def run():
            src = ActivationSource(model, hook, data, batch_size=2048, clip_batch=args.clip_batch, buffer_tokens=16384)
            got = sum(len(a) for a, _ in src)
            assert got == n_tokens, (got, n_tokens)

        return run

    cases = {
        "plain forward": plain,
        "source blocks.2.hook_resid_post": source("blocks.2.hook_resid_post"),
        f"source {last}": source(last),
    }
    for fn in cases.values():  # warm-up
        fn()
    times = {k: {"cpu": [], "wall": []} for k in cases}
    for _ in range(args.reps):
        for name, fn in cases.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            times[name]["cpu"].append(time.process_time() - c0)
            times[name]["wall"].append(time.perf_counter() - w0)
    res = {
        "clips": args.clips,
        "tokens": n_tokens,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cases": {},
    }
    base = statistics.median(times["plain forward"]["cpu"])
    base_wall = statistics.median(times["plain forward"]["wall"])
    for name, t in times.items():
        cpu, wall = statistics.median(t["cpu"]), statistics.median(t["wall"])
        res["cases"][name] = {
            "cpu_s": cpu,
            "wall_s": wall,
            "tokens_per_cpu_s": n_tokens / cpu,
            "tokens_per_wall_s": n_tokens / wall,
            "rate_vs_plain_cpu": base / cpu,
            "rate_vs_plain_wall": base_wall / wall,
        }
    for name, r in res["cases"].items():
        print(
            f"{name:40s} {r['tokens_per_cpu_s']:9.0f} tok/CPU-s ({r['rate_vs_plain_cpu']:.2f}x plain)  "
            f"{r['tokens_per_wall_s']:9.0f} tok/wall-s ({r['rate_vs_plain_wall']:.2f}x)"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sae_throughput.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
