"""The ``hooked-vivit`` command."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path


# ---------------------------------------------------------------------------------------- argument checks
# Every bad flag is refused while parsing, before any model or clip is loaded: one line, exit 2.
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int, high: int | None = None, *, even: bool = False):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high) or (even and value % 2):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(
                f"expected {'an even' if even else 'an'} integer {span}, got {value}"
                + (" (mp4 stores only even frame sizes)" if even and value % 2 else "")
            )
        return value

    return parse


def _probe_pairs(text: str) -> int:
    value = _int_at_least(0)(text)
    if 0 < value < 3:
        raise argparse.ArgumentTypeError(
            f"expected 0 (skip the probes) or an integer >= 3 (probes are held out by pair), got {value}"
        )
    return value


def _finite(low: float, *, strict: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>' if strict else '>='} {low:g}, got {text}")
        return value

    return parse


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: CUDA is not available on this machine (torch.cuda.is_available() is False); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}; expected cpu, cuda, cuda:N or mps")
    return text


def _local_dir(name_or_path: str) -> Path | None:
    """The checkpoint directory a --model names, if it is a local one (an input never to be overwritten)."""
    from hooked_vivit import organism

    path = Path(organism.model_source(name_or_path)).expanduser()
    return path if path.is_dir() else None


def _require_file(flag: str, path: Path) -> None:
    if not path.expanduser().is_file():
        raise FileNotFoundError(
            f"{flag} {path}: "
            + ("is a directory, expected a video file" if path.expanduser().is_dir() else "no such video file")
        )


def _require_classifier(model, flag_value: str) -> None:
    if model.unembed is None:
        raise ValueError(
            f"--model {flag_value}: a backbone checkpoint without classifier (VivitModel / VideoMAEModel); analyze needs "
            "class logits, so give a *ForVideoClassification checkpoint"
        )


def _cmd_info(args: argparse.Namespace) -> int:
    from hooked_vivit import HookedVideoTransformer, organism

    model = HookedVideoTransformer.from_pretrained(
        organism.model_source(args.model), device=args.device
    )  # class by model_type
    print(model)
    if args.hooks:
        for name in model.hook_dict:
            print(name)
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    import json

    import cv2

    from hooked_vivit import synthetic
    from hooked_vivit.output_dir import OutputDir
    from hooked_vivit.video import write_video

    with OutputDir(args.out, overwrite=args.overwrite, writer="hooked-vivit render") as out, out.writing() as tmp:
        pos, neg, meta = synthetic.render_pair(args.domain, args.seed, num_frames=args.frames, size=args.size)
        write_video(pos, tmp / "positive.mp4", fps=args.fps)
        write_video(neg, tmp / "negative.mp4", fps=args.fps)
        grid = synthetic.frame_grid([pos, neg], labels=[meta["outcomes"]["positive"], meta["outcomes"]["negative"]])
        cv2.imwrite(str(tmp / "frames.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        (tmp / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "masks"}, indent=2) + "\n")
    print(
        f"wrote {args.out}: positive.mp4 ({meta['outcomes']['positive']}), negative.mp4 "
        f"({meta['outcomes']['negative']}), diverging at frame {meta['divergence_frame']}"
    )
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from hooked_vivit.analysis import pipeline
    from hooked_vivit.output_dir import OutputDir

    if bool(args.clean) != bool(args.corrupted):
        raise ValueError("give both --clean and --corrupted video files, or neither (then a pair is rendered)")
    if args.clean:
        _require_file("--clean", args.clean)
        _require_file("--corrupted", args.corrupted)
    inputs = [args.clean, args.corrupted, _local_dir(args.model)]
    # Reserved (checked and locked) before the model loads: a bad --out costs nothing.
    with OutputDir(args.out, overwrite=args.overwrite, inputs=inputs, writer="hooked-vivit analyze") as out:
        model = pipeline.load_model(args.model, args.device)
        _require_classifier(model, args.model)
        if args.clean:
            pair = pipeline.video_pair(model, args.clean, args.corrupted)
        else:
            pair = pipeline.rendered_pair(model, args.domain, args.seed)
        if args.outcome_classes:  # checked against the model's labels before anything runs
            from hooked_vivit.analysis.experiments import outcome_class_pair

            outcome_class_pair(model, args.outcome_classes)
        results = pipeline.analyze_pair(
            model, pair, probe_pairs=args.probe_pairs, progress=not args.quiet, outcome_classes=args.outcome_classes
        )
        pipeline.write_analysis(out, model, pair, results)
    h = results["recovery"]["headline"]
    rec = results["recovery"]["variants"][h]
    print(
        f"wrote {args.out}/report.html ({results['seconds']:.1f} s): attention blocks recover "
        f"{min(rec['attn']):.0%}..{max(rec['attn']):.0%}, MLP blocks {min(rec['mlp']):.0%}..{max(rec['mlp']):.0%} ({h})"
    )
    return 0


def _pairs_or_manifest(text: str) -> int | Path:
    if text.strip().lstrip("+-").isdigit():
        return _int_at_least(3)(text)
    return Path(text)  # a manifest (read, and checked, by the study)


def _cmd_study_manifest(args: argparse.Namespace) -> int:  # study --pairs MANIFEST (issue 20)
    from hooked_vivit.analysis import pipeline
    from hooked_vivit.analysis.pair_study import study_pairs

    st = study_pairs(
        args.model,
        args.pairs,
        args.out,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.quiet,
        outcome_classes=args.outcome_classes,
    )
    if st is not None:  # rank 0
        g = st["mlp_minus_attn"]
        print(
            f"{st['domain']}: MLP - attention recovery ({st['headline']}) {pipeline.gap_text(g)} over {st['pairs']} pairs"
            + (f"; {len(st['skipped'])} pair(s) skipped" if st["skipped"] else "")
        )
        for s in st["skipped"]:
            print(f"  {s['pair']}: {s['reason']}")
        print(f"wrote {args.out}/report.html")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from hooked_vivit.analysis import pipeline
    from hooked_vivit.output_dir import OutputDir

    if isinstance(args.pairs, Path):
        return _cmd_study_manifest(args)

    with OutputDir(
        args.out, overwrite=args.overwrite, inputs=[_local_dir(args.model)], writer="hooked-vivit study"
    ) as out:
        model = pipeline.load_model(args.model, args.device)
        if args.outcome_classes:  # checked against the model's labels before anything runs
            from hooked_vivit.analysis.experiments import outcome_class_pair

            outcome_class_pair(model, args.outcome_classes)
        studies = pipeline.run_study(
            model, args.domain, args.pairs, out, progress=not args.quiet, outcome_classes=args.outcome_classes
        )
    for st in studies:
        g = st["mlp_minus_attn"]
        print(
            f"{st['domain']}: MLP - attention recovery ({st['headline']}) {pipeline.gap_text(g)} over {st['pairs']} pairs"
        )
    print(f"wrote {args.out}/report.html")
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
    import torch
    import transformers

    from hooked_vivit import HookedVideoTransformer, organism
    from hooked_vivit.config import to_dtype
    from hooked_vivit.loading import resolve_checkpoint
    from hooked_vivit.parity import compare
    from hooked_vivit.video import load_video, preprocess

    path = resolve_checkpoint(organism.model_source(args.model))
    dtype = to_dtype(args.dtype)
    hooked = HookedVideoTransformer.from_pretrained(path, device=args.device, dtype=dtype)  # class by model_type
    # A backbone has no classifier.
    hf_names = {
        "vivit": ("VivitModel", "VivitForVideoClassification"),
        "videomae": ("VideoMAEModel", "VideoMAEForVideoClassification"),
    }
    hf_names["timesformer"] = ("TimesformerModel", "TimesformerForVideoClassification")
    hf_names["vjepa2"] = ("VJEPA2Model", "VJEPA2ForVideoClassification")
    hf_cls = getattr(transformers, hf_names[hooked.model_type][hooked.unembed is not None])
    hf = hf_cls.from_pretrained(path, attn_implementation="eager", dtype=dtype).to(args.device).eval()
    cfg = hooked.cfg
    if args.video:
        x = preprocess(load_video(args.video, cfg.num_frames), config=cfg)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.randn(1, cfg.num_frames, cfg.n_channels, *cfg.image_size, generator=gen)
    report = compare(hooked, hf, x, attn="eager")
    print(report.to_markdown(args.tol))
    return 0 if report.ok(args.tol) else 1


# ---------------------------------------------------------------------------------------- extract (issue 20)
def _cmd_extract(args: argparse.Namespace) -> int:
    from hooked_vivit.extract import extract

    summary = extract(
        args.model,
        args.videos,
        args.out,
        hooks=args.hooks,
        positions=args.positions,
        dtype=args.dtype,
        batch_size=args.batch_size,
        workers=args.workers,
        shard_clips=args.shard_clips,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if "index" in summary:  # rank 0
        errors = summary["errors"]
        print(
            f"wrote {args.out}: {summary['extracted']} of {summary['clips']} clips in {summary['shards']} shard(s) "
            f"({summary['seconds']:.1f} s)" + (f"; {len(errors)} file(s) skipped:" if errors else "")
        )
        for e in errors:
            print(f"  {e['file']}: {e['reason']}")
    return 0


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="activations of chosen hooks over a folder or manifest of clips, to safetensors shards "
        "(resumable; data-parallel under torchrun)",
    )
    p.add_argument("--model", default="actions", help="checkpoint directory, hub id or organism name; default: actions")
    p.add_argument(
        "--videos",
        required=True,
        type=Path,
        help="a folder of videos, or a CSV / JSONL manifest (path, label, pair, role, start, end)",
    )
    p.add_argument(
        "--hooks", required=True, help="comma-separated hook names; patterns allowed (blocks.*.hook_resid_post)"
    )
    p.add_argument(
        "--positions", default="cls", help="cls, all, patches, or comma-separated token indices (default: cls)"
    )
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="stored dtype (default: the model's)"
    )
    p.add_argument("--batch-size", type=_int_at_least(1), default=8, help="clips per forward pass")
    p.add_argument(
        "--workers", type=_int_at_least(0), default=2, help="DataLoader processes decoding clips (0: in this process)"
    )
    p.add_argument(
        "--shard-clips", type=_int_at_least(1), default=None, help="clips per shard (default: up to 256, about 1 GiB)"
    )
    p.add_argument(
        "--device", default="cpu", type=_device, help="cpu, cuda (under torchrun: each rank's LOCAL_RANK GPU) or cuda:N"
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier extract output, or discard an unfinished run with other settings (never other files)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_extract)


# ---------------------------------------------------------------------------------------- sae (hooked_vivit.sae)
def _sae_commands():
    try:
        from hooked_vivit.sae import commands
        from hooked_vivit.sae.train import require_sae_lens

        require_sae_lens()
    except ImportError as e:  # one line, as every other bad setup
        raise ValueError(str(e)) from e
    return commands


def _cmd_sae_train(args: argparse.Namespace) -> int:
    commands = _sae_commands()

    if args.videos is not None and not args.videos.expanduser().is_dir():
        raise FileNotFoundError(f"--videos {args.videos}: no such folder of videos")
    res = commands.train(
        model_name=args.model,
        hook=args.hook,
        clips=args.clips,
        out=args.out,
        architecture=args.architecture,
        d_sae=args.d_sae,
        k=args.k,
        l1_coefficient=args.l1,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_clips=args.eval_clips,
        videos=args.videos,
        workers=args.workers,
        device=args.device,
        seed=args.seed,
        overwrite=args.overwrite,
        local_model=_local_dir(args.model),
    )
    e, t = res["evaluation"], res["provenance"]["training"]
    print(
        f"wrote {args.out}: FVU {e['fvu']:.4f}, L0 {e['l0']:.1f}, dead {e['dead']}/{e['d_sae']}, KL {e['kl']:.4f}, "
        f"temporal coherence {e['temporal_coherence']['mean']:.3f}; trained in {t['wall_seconds']:.0f} s wall, {t['cpu_seconds']:.0f} s CPU"
    )
    return 0


def _cmd_sae_report(args: argparse.Namespace) -> int:
    commands = _sae_commands()

    res = commands.report(
        sae_dir=args.sae,
        out=args.out,
        clips=args.clips,
        features=args.features,
        domain=args.domain,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}/report.html ({res['seconds']:.1f} s): top pair feature {res['pair_features'][0]['feature']}, "
        f"all {len(res['pair_features'])} shown features patched together restore {res['patching_all_shown']['cls_projection']:.1%} (CLS projection)"
    )
    return 0


def _add_sae_parser(sub) -> None:
    sae = sub.add_parser("sae", help="sparse autoencoders through SAELens (pip install 'hooked-vivit[sae]')")
    sae_sub = sae.add_subparsers(dest="sae_command", required=True)
    tr = sae_sub.add_parser(
        "train", help="train an SAE on one hook's token activations, evaluate it, save it (SAELens format)"
    )
    tr.add_argument(
        "--model", default="actions", help="checkpoint directory, hub id or organism name; default: actions"
    )
    tr.add_argument(
        "--hook", default="blocks.2.hook_resid_post", help="a per-token hook (resid, attn_out, mlp_out, hook_z ...)"
    )
    tr.add_argument(
        "--clips", type=_int_at_least(1), default=600, help="rendered training clips per epoch (seeds from 7,000,000)"
    )
    tr.add_argument("--videos", type=Path, help="train on every video in this folder instead of rendered clips")
    tr.add_argument(
        "--architecture", default="topk", choices=["standard", "topk", "batchtopk", "jumprelu", "matryoshka"]
    )
    tr.add_argument("--d-sae", type=_int_at_least(1), default=512)
    tr.add_argument(
        "--k", type=_int_at_least(1), default=32, help="active features per token (topk, batchtopk, matryoshka)"
    )
    tr.add_argument(
        "--l1", type=_finite(0.0, strict=True), default=5.0, help="sparsity coefficient (standard, jumprelu)"
    )
    tr.add_argument("--epochs", type=_int_at_least(1), default=2)
    tr.add_argument("--batch-size", type=_int_at_least(1), default=2048, help="tokens per training step")
    tr.add_argument(
        "--eval-clips",
        type=_int_at_least(1),
        default=60,
        help="held-out rendered clips for the evaluation (seeds from 8,000,000)",
    )
    tr.add_argument(
        "--workers", type=_int_at_least(0), default=1, help="DataLoader processes rendering or decoding clips"
    )
    tr.add_argument("--seed", type=_int_at_least(0), default=0)
    tr.add_argument("--device", default="cpu", type=_device)
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--overwrite", action="store_true", help="replace an earlier sae train output (never other files)")
    tr.set_defaults(func=_cmd_sae_train)
    rep = sae_sub.add_parser(
        "report", help="HTML feature report: evaluation, minimal-pair features on frames, feature patching"
    )
    rep.add_argument(
        "--sae", type=Path, default=None, help="a directory sae train wrote; default: the SAE shipped for the organism"
    )
    rep.add_argument(
        "--clips", type=_int_at_least(1), default=48, help="held-out rendered clips searched for top activations"
    )
    rep.add_argument("--features", type=_int_at_least(1), default=6, help="minimal-pair features shown")
    rep.add_argument("--domain", default="bowling", choices=["bowling", "golf", "basketball"])
    rep.add_argument("--seed", type=_int_at_least(0), default=4_000_000)
    rep.add_argument("--device", default="cpu", type=_device)
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument(
        "--overwrite", action="store_true", help="replace an earlier sae report output (never other files)"
    )
    rep.set_defaults(func=_cmd_sae_report)


MODEL_HELP = "checkpoint directory, hub id or organism name (actions, outcomes); default: the action organism"


def _cmd_validate(args: argparse.Namespace) -> int:
    from hooked_vivit.analysis import validation
    from hooked_vivit.output_dir import OutputDir

    with OutputDir(args.out, overwrite=args.overwrite, writer="hooked-vivit validate") as out:
        data = validation.validate(
            args.model,
            args.planted,
            n_pairs=args.pairs,
            domains=args.domain,
            sanity_pairs=args.sanity_pairs,
            attribution_pairs=args.attribution_pairs,
            n_controls=args.controls,
            progress=not args.quiet,
            ladder=args.ladder,
            ladder_pairs=args.ladder_pairs,
            ladder_null_pairs=args.ladder_null_pairs,
            null_pairs=args.null_pairs,
        )
        validation.write_validation(out, data)
    print(validation.validation_markdown(data))
    written = "validation.md, validation.json" + (" and ladder.png" if "ladder" in data else "")
    print(f"wrote {args.out}/{written}")
    return 0


def _organism_name(text: str) -> str:
    from hooked_vivit import organism

    if organism.resolve(text) is None:
        raise argparse.ArgumentTypeError(f"unknown organism {text!r}; expected one of {sorted(organism.ORGANISMS)}")
    return organism.resolve(text)


OUTCOME_CLASSES_ARG = dict(
    nargs=2,
    metavar=("POSITIVE", "NEGATIVE"),
    help="the classifier's classes of the positive and negative outcome (label names or indices): component "
    "patching then reports the normalised logit-difference recovery, as the headline; default: the model's labels "
    "of a rendered pair's outcomes where it has them (the outcomes organism), else none",
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hooked-vivit", description="Hooked ViViT: interpretability for video transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a checkpoint and describe the hooked model")
    info.add_argument(
        "--model", required=True, help="checkpoint directory, hub id or organism name (actions, outcomes)"
    )
    info.add_argument("--device", default="cpu", type=_device)
    info.add_argument("--hooks", action="store_true", help="list every hook name")
    info.set_defaults(func=_cmd_info)

    render = sub.add_parser("render", help="render a procedural minimal pair to mp4 files")
    render.add_argument("--domain", required=True, choices=["bowling", "golf", "basketball"])
    render.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=4_000_000,
        help="render seed; 4,000,000-6,999,999 are held out from the organism (default: 4,000,000)",
    )
    render.add_argument("--frames", type=_int_at_least(8, 1024), default=32)
    render.add_argument(
        "--size", type=_int_at_least(32, 2048, even=True), default=224, help="frame size in pixels (even)"
    )
    render.add_argument("--fps", type=_finite(0.0, strict=True), default=25.0)
    render.add_argument("--out", required=True, type=Path)
    render.add_argument("--overwrite", action="store_true", help="replace an earlier render output (never other files)")
    render.set_defaults(func=_cmd_render)

    analyze = sub.add_parser("analyze", help="the reference paper's whole analysis of one pair, as a report")
    analyze.add_argument("--clean", type=Path, help="positive video file (e.g. the strike)")
    analyze.add_argument("--corrupted", type=Path, help="negative video file (e.g. the gutter ball)")
    analyze.add_argument(
        "--domain",
        default="bowling",
        choices=["bowling", "golf", "basketball"],
        help="render a pair (without --clean/--corrupted)",
    )
    analyze.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=4_000_000,
        help="render seed; 4,000,000-6,999,999 are held out from the organism (default: 4,000,000)",
    )
    analyze.add_argument("--model", default="actions", help=MODEL_HELP)
    analyze.add_argument("--device", default="cpu", type=_device)
    analyze.add_argument(
        "--probe-pairs", type=_probe_pairs, default=100, help="rendered pairs for the outcome probes (0: skip)"
    )
    analyze.add_argument("--outcome-classes", **OUTCOME_CLASSES_ARG)
    analyze.add_argument("--out", type=Path, required=True)
    analyze.add_argument(
        "--overwrite", action="store_true", help="replace an earlier analyze output (never other files)"
    )
    analyze.add_argument("--quiet", action="store_true")
    analyze.set_defaults(func=_cmd_analyze)

    study = sub.add_parser("study", help="(a), (b) and (f) over many rendered pairs, with bootstrap intervals")
    study.add_argument("--domain", nargs="+", default=["bowling", "golf"], choices=["bowling", "golf", "basketball"])
    study.add_argument(
        "--pairs",
        type=_pairs_or_manifest,
        default=50,
        help="rendered pairs per domain (an integer >= 3), or a CSV / JSONL manifest of real clip pairs (path, pair, role)",
    )
    study.add_argument("--model", default="actions", help=MODEL_HELP)
    study.add_argument("--device", default="cpu", type=_device)
    study.add_argument("--outcome-classes", **OUTCOME_CLASSES_ARG)
    study.add_argument("--out", type=Path, required=True)
    study.add_argument("--overwrite", action="store_true", help="replace an earlier study output (never other files)")
    study.add_argument("--quiet", action="store_true")
    study.set_defaults(func=_cmd_study)

    parity = sub.add_parser(
        "parity", help="compare the hooked model with transformers on a checkpoint (exit 1 above tolerance)"
    )
    parity.add_argument("--model", default="actions", help=MODEL_HELP)
    parity.add_argument("--video", type=Path, help="a clip to run (default: seeded random pixels)")
    parity.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parity.add_argument("--device", default="cpu", type=_device)
    parity.add_argument("--seed", type=_int_at_least(0), default=0)
    parity.add_argument(
        "--tol",
        type=_finite(0.0, strict=False),
        default=None,
        help="override the dtype's tolerance (fp32 1e-5, fp16 1e-2, bf16 5e-2)",
    )
    parity.set_defaults(func=_cmd_parity)
    _add_extract(sub)
    _add_sae_parser(sub)

    from hooked_vivit.planted import NAMES as PLANTED

    validate = sub.add_parser(
        "validate", help="every method against known mechanisms: planted models and both organisms, as a table"
    )
    validate.add_argument(
        "--model", nargs="*", type=_organism_name, default=["actions", "outcomes"], help="organisms (default: both)"
    )
    validate.add_argument(
        "--planted", nargs="*", choices=PLANTED, default=list(PLANTED), help="planted models (default: all)"
    )
    validate.add_argument(
        "--domain", nargs="+", default=["bowling", "golf", "basketball"], choices=["bowling", "golf", "basketball"]
    )
    validate.add_argument("--pairs", type=_int_at_least(5), default=50, help="held-out pairs per domain (default 50)")
    validate.add_argument(
        "--sanity-pairs", type=_int_at_least(0), default=50, help="pairs for the whole-residual patch check"
    )
    validate.add_argument(
        "--attribution-pairs", type=_int_at_least(0), default=50, help="pairs for attribution vs real patching"
    )
    validate.add_argument(
        "--controls", type=_int_at_least(1), default=4, help="random equal-size boxes per pair for the ablation"
    )
    validate.add_argument(
        "--ladder",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each method's decision rule over the --planted models' difficulty ladder (recall per level, "
        "the null's false-positive rate, where each method breaks; ladder.png): about 1 min on one CPU thread "
        "at the default pairs (default: on)",
    )
    validate.add_argument(
        "--ladder-pairs",
        type=_int_at_least(1),
        default=20,
        help="ladder pairs per planted model and level (default 20)",
    )
    validate.add_argument(
        "--ladder-null-pairs",
        type=_int_at_least(100),
        default=100,
        help="ladder pairs per level of the null model (default and minimum 100)",
    )
    validate.add_argument(
        "--null-pairs",
        type=_int_at_least(100),
        default=100,
        help="pairs of the planted null (its false-positive rates, every method on each; default and minimum 100)",
    )
    validate.add_argument("--out", type=Path, required=True)
    validate.add_argument(
        "--overwrite", action="store_true", help="replace an earlier validate output (never other files)"
    )
    validate.add_argument("--quiet", action="store_true")
    validate.set_defaults(func=_cmd_validate)
    return parser


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = f"hooked-vivit {args.command}"

    def format_warning(message, category, filename, lineno, line=None):  # noqa: ARG001
        return f"{prog}: warning: {_one_line(str(message))}\n"

    old_format = warnings.formatwarning
    warnings.formatwarning = format_warning  # one line each, without the library's source line
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # The output directory was cleaned up on the way out (hooked_vivit.output_dir); say so, no traceback.
        out = getattr(args, "out", None)
        said = f"{prog}: interrupted (Ctrl-C)"
        if out is not None:
            said += f"; --out {out} was not written"
            if args.command == "extract":  # resume mode keeps the finished shards (hooked_vivit.output_dir)
                said += f" (finished shards stay in {Path(out).parent / f'.{Path(out).name}.resume'}: rerun the same command to continue)"
        print(said, file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
    except (OSError, ValueError, KeyError, TypeError, MemoryError) as e:
        message = str(e.args[0]) if type(e) is KeyError and e.args else str(e)  # KeyError's str() is a repr
        print(f"{prog}: error: {_one_line(message) or type(e).__name__}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = old_format


if __name__ == "__main__":
    sys.exit(main())
