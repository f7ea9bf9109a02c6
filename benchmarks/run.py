"""Speed benchmarks, measured side by side in ONE process on the same input.

    python -m benchmarks.run --device cpu --out benchmarks/results

ViViT-B / Kinetics-400 shape (32 frames, 224 px, 3137 tokens) with random weights, batch 1 by
default. Each case runs ``--warmup`` times, then the cases are timed round-robin ``--reps`` times
(so drift hits all alike) and the median is kept. Ratios are what to quote; CPU seconds are not.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import VivitConfig, VivitForVideoClassification

from hooked_vivit import HookedViViT
from hooked_vivit.cache_memory import without_maps

GOALS = {
    "preprocess / VivitImageProcessor": 1.0,
    "component sweep / 24 plain forwards": 1.3,
    "run_with_cache peak / (weights + cached), cache(all but patterns/scores)": 1.1,
    "run_with_cache peak / (weights + cached), cache(everything)": 1.1,
    "attribution patching / one forward": 3.0,
    "hooked / hf_sdpa": 1.05,
    "CLS rows of every layer and head / plain SDPA forward": 1.15,
    "hooked VideoMAE / hf_sdpa VideoMAE": 1.05,
    "hooked TimeSformer / hf TimeSformer (eager: its only attention)": 1.05,
    "hooked cache(patterns+resid) / hf_eager(output_attentions+hidden_states)": 1.05,
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_cases(cases: dict[str, Callable[[], object]], device: str, warmup: int, reps: int) -> dict[str, float]:
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def cache_case(model, x: torch.Tensor, names) -> Callable[[], None]:
    """A timed case: run_with_cache, then drop the cache."""

    def run() -> None:
        _, cache = model.run_with_cache(x, names_filter=names)
        del cache

    return run


def build_models(device: str, dtype: torch.dtype, layers: int):
    def config() -> VivitConfig:  # one per model: _from_config writes the attention choice into it
        return VivitConfig(num_labels=400, num_hidden_layers=layers)

    torch.manual_seed(0)
    hf_sdpa = VivitForVideoClassification._from_config(config(), attn_implementation="sdpa").eval()
    hf_eager = VivitForVideoClassification._from_config(config(), attn_implementation="eager").eval()
    assert hf_sdpa.config._attn_implementation == "sdpa" and hf_eager.config._attn_implementation == "eager"
    hf_eager.load_state_dict(hf_sdpa.state_dict())
    hooked = HookedViViT.from_hf_model(hf_sdpa)
    return [m.to(device=device, dtype=dtype) for m in (hf_sdpa, hf_eager, hooked)]


def forward_benchmark(device: str, dtype: torch.dtype, batch: int, layers: int, warmup: int, reps: int) -> dict:
    hf_sdpa, hf_eager, hooked = build_models(device, dtype, layers)
    x = torch.randn(batch, 32, 3, 224, 224, device=device, dtype=dtype)
    n = hooked.cfg.n_layers
    with_patterns = (
        [f"blocks.{l}.attn.hook_pattern" for l in range(n)]
        + [f"blocks.{l}.hook_resid_pre" for l in range(n)]
        + [f"blocks.{n - 1}.hook_resid_post"]
    )

    cases = {
        "hf_sdpa": lambda: hf_sdpa(x),
        "hf_eager": lambda: hf_eager(x),
        "hooked": lambda: hooked(x),
        "hf_sdpa(output_hidden_states)": lambda: hf_sdpa(x, output_hidden_states=True),
        "hooked cache(all but patterns/scores)": cache_case(hooked, x, without_maps),
        "hf_eager(output_attentions+hidden_states)": lambda: hf_eager(
            x, output_attentions=True, output_hidden_states=True
        ),
        "hooked cache(patterns+resid)": cache_case(hooked, x, with_patterns),
        "hooked attention_rows(cls, every layer)": lambda: hooked.attention_rows(x, queries="cls"),
    }
    with torch.inference_mode():
        times = time_cases(cases, device, warmup, reps)
    ratios = {
        "hooked / hf_sdpa": times["hooked"] / times["hf_sdpa"],
        "hooked / hf_eager": times["hooked"] / times["hf_eager"],
        "hooked cache(all but patterns/scores) / hf_sdpa(output_hidden_states)": times[
            "hooked cache(all but patterns/scores)"
        ]
        / times["hf_sdpa(output_hidden_states)"],
        "hooked cache(patterns+resid) / hf_eager(output_attentions+hidden_states)": times[
            "hooked cache(patterns+resid)"
        ]
        / times["hf_eager(output_attentions+hidden_states)"],
        "CLS rows of every layer and head / plain SDPA forward": times["hooked attention_rows(cls, every layer)"]
        / times["hooked"],
    }
    return {"seconds": times, "ratios": ratios}


ROWS_MEMORY_CASES = ("attention_rows(cls)", "run_with_cache(patterns)")


def measure_rows_memory(device: str, dtype: torch.dtype, layers: int, label: str) -> dict:
    """Peak memory of the CLS rows of every layer and head against a cache of every full pattern
    (run in a fresh process, as measure_cache_memory)."""
    _, _, hooked = build_models(device, dtype, layers)
    x = torch.randn(1, 32, 3, 224, 224, device=device, dtype=dtype)
    held = {}

    def run():
        if label == "attention_rows(cls)":
            held["bytes"] = hooked.attention_rows(x, queries="cls").nbytes
        else:
            with torch.inference_mode():
                _, c = hooked.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
            held["bytes"] = c.nbytes()
            del c

    before, peak = PeakMemory(device).measure(run)
    return {"result_bytes": held["bytes"], "peak_extra_bytes": peak - before}


def rows_memory_benchmark(device: str, dtype: torch.dtype, layers: int) -> dict:
    """Peak memory beyond the weights and input: CLS rows vs the full-pattern cache."""
    memory = {
        label: measure_cache_memory_subprocess(device, args_dtype(dtype), layers, label) for label in ROWS_MEMORY_CASES
    }
    ratios = {
        "CLS rows peak / full-pattern cache peak (extra bytes)": memory["attention_rows(cls)"]["peak_extra_bytes"]
        / memory["run_with_cache(patterns)"]["peak_extra_bytes"]
    }
    return {"ratios": ratios, "memory": memory}


def videomae_benchmark(device: str, dtype: torch.dtype, batch: int, layers: int, warmup: int, reps: int) -> dict:
    """VideoMAE-B / Kinetics-400 shape (16 frames, 224 px, 1568 tokens): hooked forward vs HF sdpa."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    from hooked_vivit import HookedVideoMAE

    hf = VideoMAEForVideoClassification._from_config(
        VideoMAEConfig(num_labels=400, num_hidden_layers=layers), attn_implementation="sdpa"
    ).eval()
    assert hf.config._attn_implementation == "sdpa"
    hooked = HookedVideoMAE.from_hf_model(hf)
    hf, hooked = (m.to(device=device, dtype=dtype) for m in (hf, hooked))
    x = torch.randn(batch, 16, 3, 224, 224, device=device, dtype=dtype)
    with torch.inference_mode():
        times = time_cases(
            {"hf_sdpa VideoMAE": lambda: hf(x), "hooked VideoMAE": lambda: hooked(x)}, device, warmup, reps
        )
    return {
        "seconds": times,
        "ratios": {"hooked VideoMAE / hf_sdpa VideoMAE": times["hooked VideoMAE"] / times["hf_sdpa VideoMAE"]},
    }


def timesformer_benchmark(device: str, dtype: torch.dtype, batch: int, layers: int, warmup: int, reps: int) -> dict:
    """TimeSformer-B / Kinetics-400 shape (8 frames, 224 px, 1569 tokens): hooked forward vs HF.
    transformers' TimeSformer has no sdpa implementation (it refuses attn_implementation="sdpa"):
    its one attention is the reference; the hooked model runs its fused path."""
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    from hooked_vivit import HookedTimeSformer

    hf = TimesformerForVideoClassification(TimesformerConfig(num_labels=400, num_hidden_layers=layers)).eval()
    hooked = HookedTimeSformer.from_hf_model(hf)
    hf, hooked = (m.to(device=device, dtype=dtype) for m in (hf, hooked))
    x = torch.randn(batch, 8, 3, 224, 224, device=device, dtype=dtype)
    with torch.inference_mode():
        times = time_cases(
            {"hf TimeSformer": lambda: hf(x), "hooked TimeSformer": lambda: hooked(x)}, device, warmup, reps
        )
    return {
        "seconds": times,
        "ratios": {
            "hooked TimeSformer / hf TimeSformer (eager: its only attention)": times["hooked TimeSformer"]
            / times["hf TimeSformer"]
        },
    }


def video_benchmark(reps: int) -> dict:
    """Preprocessing a 32-frame 360x640 clip vs VivitImageProcessor; rendering a 32x224x224 pair
    on one thread (issue goal: <= 0.5 s)."""
    import numpy as np
    from transformers import VivitImageProcessor

    from hooked_vivit import synthetic, video

    frames = synthetic.render_clip("bowling", 0, num_frames=32, size=360).frames
    frames = np.concatenate([frames, frames[:, :, :280]], axis=2)  # 360x640
    proc = VivitImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    cases = {
        "VivitImageProcessor(32x360x640)": lambda: proc(list(frames), return_tensors="pt"),
        "hooked_vivit.video.preprocess(32x360x640)": lambda: video.preprocess(frames),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = time_cases(cases, "cpu", 1, reps)
        times["render_pair(bowling, 32x224x224), 1 thread"] = time_cases(
            {"r": lambda: synthetic.render_pair("bowling", 1)}, "cpu", 1, reps
        )["r"]
        times["render_pair(golf, 32x224x224), 1 thread"] = time_cases(
            {"r": lambda: synthetic.render_pair("golf", 1)}, "cpu", 1, reps
        )["r"]
    finally:
        torch.set_num_threads(threads)
    ratios = {
        "preprocess / VivitImageProcessor": times["hooked_vivit.video.preprocess(32x360x640)"]
        / times["VivitImageProcessor(32x360x640)"]
    }
    return {"seconds": times, "ratios": ratios}


def patching_benchmark(device: str, dtype: torch.dtype, layers: int, reps: int) -> dict:
    """The paper's 24-component sweep (attention and MLP block of every layer) batched vs 24 plain
    forwards and vs TransformerLens's generic_activation_patch loop."""
    import pandas as pd
    from transformer_lens.patching import generic_activation_patch

    from hooked_vivit.causal import patching
    from hooked_vivit.causal.metrics import ClassLogit

    _, _, hooked = build_models(device, dtype, layers)
    clean, corrupted = clean_and_corrupted(device, dtype)
    n = hooked.cfg.n_layers
    names = [f"blocks.{l}.hook_{c}" for l in range(n) for c in ("attn_out", "mlp_out")]
    with torch.inference_mode():
        _, clean_cache = hooked.run_with_cache(clean, names_filter=names)
    metric = ClassLogit(31)
    patches = patching.component_patches(hooked)
    layer_df = pd.DataFrame({"layer": range(n)})

    def whole(act, index, clean_act):
        return clean_act.clone()

    def tl_loop():
        for act in ("attn_out", "mlp_out"):
            generic_activation_patch(
                hooked, corrupted, clean_cache, metric.mean_over_batch, whole, act, index_df=layer_df
            )

    def plain_forwards():
        for _ in range(len(patches)):
            hooked(corrupted)

    cases = {
        f"{len(patches)} plain forwards": plain_forwards,
        f"batched sweep of {len(patches)} components": lambda: patching.run_patches(
            hooked, patches, source_cache=clean_cache, target=corrupted, metric=metric, progress=False
        ),
        "TransformerLens generic_activation_patch loop": tl_loop,
    }
    import transformer_lens.patching as tlp

    tqdm_orig = tlp.tqdm
    tlp.tqdm = lambda x, *a, **k: x  # keep the benchmark log clean
    try:
        with torch.inference_mode(False):
            times = time_cases(cases, device, 0, reps)
    finally:
        tlp.tqdm = tqdm_orig
    k = f"batched sweep of {len(patches)} components"
    ratios = {
        "component sweep / 24 plain forwards": times[k] / times[f"{len(patches)} plain forwards"],
        "component sweep / TransformerLens loop": times[k] / times["TransformerLens generic_activation_patch loop"],
    }
    return {"seconds": times, "ratios": ratios}


def clean_and_corrupted(device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    clean = torch.randn(1, 32, 3, 224, 224, generator=gen).to(device, dtype)
    return clean, clean + 0.5 * torch.randn(1, 32, 3, 224, 224, generator=gen).to(device, dtype)


def attribution_before_issue_18(model, clean, corrupted, metric, acts=("resid_pre", "attn_out", "mlp_out", "z")):
    """attribution_patch as it was before issue 18 (gradient from the pixels, parameters left
    requiring grad, clean run through the whole model), kept only for the side-by-side ratio."""
    from transformer_lens.utilities import get_act_name

    from hooked_vivit.causal.metrics import metric_rows

    names = [get_act_name(a, l) for a in acts for l in range(model.cfg.n_layers)]
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
    stored = {}

    def keep(act, hook):
        stored[hook.name] = act
        return act

    with torch.enable_grad():
        x = model.validate_input(corrupted).detach().clone().requires_grad_(True)
        with model.hooks(fwd_hooks=[(n, keep) for n in names]):
            logits = model(x)
        values = metric_rows(metric, logits, {})
        grads = torch.autograd.grad(values.sum(), [stored[n] for n in names])
    return [
        ((clean_cache[n].to(stored[n].dtype) - stored[n].detach()) * g).sum(-1).mean(0).detach().float().cpu()
        for n, g in zip(names, grads)
    ]


def attribution_benchmark(device: str, dtype: torch.dtype, layers: int, reps: int) -> dict:
    """Attribution patching (clean forward + corrupted forward + backward, resid_pre / attn_out /
    mlp_out / z of every layer) vs one forward, before and after issue 18, and of the second half
    of the layers only (the graph then starts there)."""
    from hooked_vivit.causal.attribution import attribution_patch
    from hooked_vivit.causal.metrics import ClassLogit

    _, _, hooked = build_models(device, dtype, layers)
    clean, corrupted = clean_and_corrupted(device, dtype)
    metric = ClassLogit(31)
    # Also: with a shared clean cache, and the fused attention's backward / forward (the kernel
    # that sets the floor). On CPU the cases run on ONE thread, timed in process CPU time as well
    # as wall time: other processes sharing the cores stretch the wall clock but not the CPU time,
    # and one thread counts no spinning OpenMP workers. Each round runs every case once
    # (round-robin, one warm-up round first); ratios are taken within a round, and their median and
    # range over the rounds reported.
    import torch.nn.functional as F

    n = hooked.cfg.n_layers
    half = list(range(n // 2, n))
    new = attribution_patch(hooked, clean, corrupted, metric)
    old = attribution_before_issue_18(hooked, clean, corrupted, metric)
    same = max(
        float((new.scores[a][l] - o.float().cpu()).abs().max())
        for (a, l), o in zip([(a, l) for a in new.scores for l in range(n)], old)
    )
    with torch.inference_mode():
        _, clean_cache = hooked.run_with_cache(
            clean, names_filter=lambda name: name.endswith(("resid_pre", "attn_out", "mlp_out", "hook_z"))
        )
    cfg = hooked.cfg
    qkv = [
        torch.randn(1, cfg.n_heads, cfg.n_ctx, cfg.d_head, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    ]
    grad_out = torch.randn_like(qkv[0])

    def attention_forward_backward() -> None:
        torch.autograd.grad(F.scaled_dot_product_attention(*qkv), qkv, grad_out)

    cases = {
        "one forward": lambda: hooked(corrupted),
        "one forward (inference_mode)": lambda: torch.inference_mode()(hooked)(corrupted),
        "attribution patching (clean fwd + corrupted fwd + bwd)": lambda: attribution_patch(
            hooked, clean, corrupted, metric
        ),
        "attribution patching before issue 18": lambda: attribution_before_issue_18(hooked, clean, corrupted, metric),
        "attribution patching with a shared clean cache (corrupted fwd + bwd)": lambda: attribution_patch(
            hooked, clean, corrupted, metric, clean_cache=clean_cache
        ),
        f"attribution patching, layers {half[0]}-{half[-1]}": lambda: attribution_patch(
            hooked, clean, corrupted, metric, layers=half
        ),
        "fused attention forward (one layer)": lambda: torch.inference_mode()(F.scaled_dot_product_attention)(*qkv),
        "fused attention forward + backward (one layer)": attention_forward_backward,
    }
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    try:
        with torch.inference_mode(False):
            for round_ in range(reps + 1):
                for name, fn in cases.items():
                    _sync(device)
                    w, c = time.perf_counter(), time.process_time()
                    fn()
                    _sync(device)
                    if round_:  # round 0 warms up
                        wall[name].append(time.perf_counter() - w)
                        cpu[name].append(time.process_time() - c)
    finally:
        torch.set_num_threads(threads)

    def ratio(samples: dict[str, list[float]], num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(samples[num], samples[den])]

    pairs = {
        "attribution patching / one forward": ("attribution patching (clean fwd + corrupted fwd + bwd)", "one forward"),
        "attribution patching before issue 18 / one forward": ("attribution patching before issue 18", "one forward"),
        "attribution patching / one forward (inference_mode)": (
            "attribution patching (clean fwd + corrupted fwd + bwd)",
            "one forward (inference_mode)",
        ),
        "attribution patching with a shared clean cache / one forward": (
            "attribution patching with a shared clean cache (corrupted fwd + bwd)",
            "one forward",
        ),
        f"attribution patching, layers {half[0]}-{half[-1]} / one forward": (
            f"attribution patching, layers {half[0]}-{half[-1]}",
            "one forward",
        ),
        "fused attention backward / forward": (
            "fused attention forward + backward (one layer)",
            "fused attention forward (one layer)",
        ),
    }
    clock = cpu if device == "cpu" else wall
    per_round = {k: ratio(clock, *v) for k, v in pairs.items()}
    # The attention's own backward: (forward + backward) - forward, over the forward.
    per_round["fused attention backward / forward"] = [r - 1 for r in per_round["fused attention backward / forward"]]
    return {
        "clock": "process CPU time, 1 thread" if device == "cpu" else "wall time",
        "seconds": {k: statistics.median(v) for k, v in clock.items()},
        "wall_seconds": {k: statistics.median(v) for k, v in wall.items()},
        "ratios": {k: statistics.median(v) for k, v in per_round.items()},
        "ratio_range": {k: [min(v), max(v)] for k, v in per_round.items()},
        "wall_ratios": {k: statistics.median(ratio(wall, *v)) for k, v in pairs.items()},
        "rounds": reps,
        "max |new - before| score": same,
    }


def make_bridge(hf_model):
    """TransformerLens 4.3's TransformerBridge around the same HF ViViT: its ViT adapter fits
    ViViT's layout once the embeddings bridge stops passing ViT's bool_masked_pos (kept here, in
    the benchmark, not in the library)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    from transformer_lens.model_bridge.supported_architectures.vit import ViTArchitectureAdapter

    class VivitEmbeddingsBridge(GeneralizedComponent):
        def forward(self, pixel_values, interpolate_pos_encoding=False, **kwargs):
            return super().forward(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)

    class VivitBridgeAdapter(ViTArchitectureAdapter):
        def prepare_model(self, hf_model):
            self.component_mapping = self._build_component_mapping(prefix="vivit.", with_classifier=True)
            self.component_mapping["embed"] = VivitEmbeddingsBridge(name="vivit.embeddings")

    c = hf_model.config
    n_ctx = 1 + (c.num_frames // c.tubelet_size[0]) * (c.image_size // c.tubelet_size[1]) * (
        c.image_size // c.tubelet_size[2]
    )
    cfg = TransformerBridgeConfig(
        d_model=c.hidden_size,
        d_head=c.hidden_size // c.num_attention_heads,
        n_layers=c.num_hidden_layers,
        n_ctx=n_ctx,
        n_heads=c.num_attention_heads,
        d_vocab=c.num_labels,
        d_mlp=c.intermediate_size,
        act_fn=c.hidden_act,
        eps=c.layer_norm_eps,
        architecture="ViTForImageClassification",
        original_architecture="VivitForVideoClassification",
        normalization_type="LN",
    )
    adapter = VivitBridgeAdapter(cfg)
    adapter.prepare_model(hf_model)
    return TransformerBridge(hf_model, adapter, tokenizer=None)


class PeakMemory:
    """Peak memory of a call: CUDA max allocated, or on CPU the process RSS sampled every 2 ms."""

    def __init__(self, device: str):
        self.device = device

    def measure(self, fn) -> tuple[int, int]:
        """(bytes in use before, peak bytes in use during)."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return before, torch.cuda.max_memory_allocated()
        import gc
        import threading

        import psutil

        gc.collect()
        proc = psutil.Process()
        before = proc.memory_info().rss
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.002)

        thread = threading.Thread(target=sample)
        thread.start()
        try:
            fn()
        finally:
            done.set()
            thread.join()
        return before, max(peak[0], proc.memory_info().rss)


MEMORY_CASES = {"cache(all but patterns/scores)": "without_maps", "cache(everything)": None}


def args_dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def measure_cache_memory(device: str, dtype: torch.dtype, layers: int, label: str) -> dict:
    """Peak memory of one run_with_cache against weights + cached bytes (run in a fresh process)."""
    _, _, hooked = build_models(device, dtype, layers)
    x = torch.randn(1, 32, 3, 224, 224, device=device, dtype=dtype)
    names = without_maps if MEMORY_CASES[label] == "without_maps" else None
    weights = sum(p.numel() * p.element_size() for p in hooked.parameters())
    held = {}

    def run():
        with torch.inference_mode():
            _, c = hooked.run_with_cache(x, names_filter=names)
        held["bytes"] = c.nbytes()
        del c

    before, peak = PeakMemory(device).measure(run)
    extra = peak - before
    return {
        "weights_bytes": weights,
        "cached_bytes": held["bytes"],
        "peak_extra_bytes": extra,
        "ratio": (weights + extra) / (weights + held["bytes"]),
    }


def measure_cache_memory_subprocess(device: str, dtype: str, layers: int, label: str) -> dict:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--memory-case",
            label,
            "--device",
            device,
            "--dtype",
            dtype,
            "--layers",
            str(layers),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bridge_without_maps(name: str) -> bool:
    """without_maps for the bridge's hook names (which the hooked model's hook-layout table does not list):
    everything but the attention scores and patterns."""
    return name.rsplit(".", 1)[-1] not in ("hook_attn_scores", "hook_pattern")


def bridge_and_memory_benchmark(device: str, dtype: torch.dtype, layers: int, reps: int) -> dict:
    """The peer (TransformerBridge) side by side, and run_with_cache's peak memory against the
    bytes it must hold (weights + cache)."""
    hf_sdpa, _, hooked = build_models(device, dtype, layers)
    bridge = make_bridge(hf_sdpa)
    x = torch.randn(1, 32, 3, 224, 224, device=device, dtype=dtype)
    with torch.inference_mode():
        assert torch.allclose(bridge(x).float(), hf_sdpa(x).logits.float(), atol=1e-3)

    cases = {
        "hooked forward": lambda: hooked(x),
        "bridge forward": lambda: bridge(x),
        "hooked cache(all but patterns/scores)": cache_case(hooked, x, without_maps),
        "bridge cache(all but patterns/scores)": cache_case(bridge, x, bridge_without_maps),
    }
    with torch.inference_mode():
        times = time_cases(cases, device, 1, reps)
    # Memory in a fresh process per case: a process that already ran other cases reuses freed
    # memory without growing its RSS, which would under-count the peak.
    memory = {
        label: measure_cache_memory_subprocess(device, args_dtype(dtype), layers, label) for label in MEMORY_CASES
    }
    ratios = {
        "hooked forward / bridge forward": times["hooked forward"] / times["bridge forward"],
        "hooked cache / bridge cache (all but patterns/scores)": times["hooked cache(all but patterns/scores)"]
        / times["bridge cache(all but patterns/scores)"],
        **{f"run_with_cache peak / (weights + cached), {k}": v["ratio"] for k, v in memory.items()},
    }
    return {"seconds": times, "ratios": ratios, "memory": memory}


def to_markdown(results: dict) -> str:
    lines = [
        f"# Benchmarks ({results['meta']['device_name']}, {results['meta']['dtype']}, batch {results['meta']['batch']}, "
        f"{results['meta']['layers']} layers)",
        "",
        "| ratio | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for name, value in results.get("forward", {}).get("ratios", {}).items():
        goal = GOALS.get(name)
        met = "" if goal is None else ("yes" if value <= goal else "no")
        lines.append(f"| {name} | {value:.3f} | {'' if goal is None else f'<= {goal}'} | {met} |")
    for section in ("videomae", "timesformer", "rows_memory", "bridge", "patching", "attribution", "video"):
        for name, value in results.get(section, {}).get("ratios", {}).items():
            goal = GOALS.get(name)
            lines.append(
                f"| {name} | {value:.3f} | {'' if goal is None else f'<= {goal}'} | {'' if goal is None else ('yes' if value <= goal else 'no')} |"
            )
    lines += ["", "| case | median seconds |", "|---|---|"]
    for section in ("forward", "videomae", "timesformer", "bridge", "patching", "attribution", "video"):
        lines += [f"| {k} | {v:.4f} |" for k, v in results.get(section, {}).get("seconds", {}).items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=12, help="fewer layers for a quick look (ratios barely change)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--memory-case", choices=list(MEMORY_CASES) + list(ROWS_MEMORY_CASES), help=argparse.SUPPRESS)
    p.add_argument(
        "--no-rows-memory", action="store_true", help="skip the (slow, ~6 GB) rows-vs-full-pattern memory comparison"
    )
    p.add_argument(
        "--only",
        choices=["forward", "videomae", "timesformer", "bridge", "patching", "attribution", "video"],
        default=None,
        help="run one section",
    )
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.memory_case:  # the child process of measure_cache_memory_subprocess
        measure = measure_rows_memory if args.memory_case in ROWS_MEMORY_CASES else measure_cache_memory
        print(json.dumps(measure(args.device, dtype, args.layers, args.memory_case)))
        return 0
    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    results = {
        "meta": {
            "device": args.device,
            "device_name": device_name,
            "dtype": args.dtype,
            "batch": args.batch,
            "layers": args.layers,
            "torch": torch.__version__,
            "reps": args.reps,
        },
    }
    if args.only in (None, "forward"):
        results["forward"] = forward_benchmark(args.device, dtype, args.batch, args.layers, args.warmup, args.reps)
        if not args.no_rows_memory:
            results["rows_memory"] = rows_memory_benchmark(args.device, dtype, args.layers)
    if args.only in (None, "videomae"):
        results["videomae"] = videomae_benchmark(args.device, dtype, args.batch, args.layers, args.warmup, args.reps)
    if args.only in (None, "timesformer"):
        results["timesformer"] = timesformer_benchmark(
            args.device, dtype, args.batch, args.layers, args.warmup, args.reps
        )
    if args.only in (None, "bridge"):
        results["bridge"] = bridge_and_memory_benchmark(args.device, dtype, args.layers, args.reps)
    if args.only in (None, "patching"):
        results["patching"] = patching_benchmark(args.device, dtype, args.layers, max(1, args.reps - 2))
    if args.only in (None, "attribution"):
        results["attribution"] = attribution_benchmark(args.device, dtype, args.layers, args.reps)
    if args.only in (None, "video"):
        results["video"] = video_benchmark(max(args.reps, 5))
    md = to_markdown(results)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "results.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
