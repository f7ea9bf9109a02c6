"""The ``hooked-vivit`` command."""

from __future__ import annotations

import argparse
import math
import sys
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
            raise argparse.ArgumentTypeError(f"expected {'an even' if even else 'an'} integer {span}, got {value}"
                                             + (" (mp4 stores only even frame sizes)" if even and value % 2 else ""))
        return value

    return parse


def _probe_pairs(text: str) -> int:
    value = _int_at_least(0)(text)
    if 0 < value < 3:
        raise argparse.ArgumentTypeError(f"expected 0 (skip the probes) or an integer >= 3 (probes are held out by pair), got {value}")
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
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine (torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
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
        raise FileNotFoundError(f"{flag} {path}: " + ("is a directory, expected a video file" if path.expanduser().is_dir() else "no such video file"))


def _require_classifier(model, flag_value: str) -> None:
    if model.unembed is None:
        raise ValueError(f"--model {flag_value}: a backbone checkpoint without classifier (VivitModel); analyze needs class logits, "
                         "so give a VivitForVideoClassification checkpoint")


def _cmd_info(args: argparse.Namespace) -> int:
    from hooked_vivit import HookedVideoTransformer, organism

    model = HookedVideoTransformer.from_pretrained(organism.model_source(args.model), device=args.device)  # class by model_type
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
    print(f"wrote {args.out}: positive.mp4 ({meta['outcomes']['positive']}), negative.mp4 "
          f"({meta['outcomes']['negative']}), diverging at frame {meta['divergence_frame']}")
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
        results = pipeline.analyze_pair(model, pair, probe_pairs=args.probe_pairs, progress=not args.quiet)
        pipeline.write_analysis(out, model, pair, results)
    rec = results["recovery"]["projection"]
    print(f"wrote {args.out}/report.html ({results['seconds']:.1f} s): attention blocks recover "
          f"{min(rec['attn']):.0%}..{max(rec['attn']):.0%}, MLP blocks {min(rec['mlp']):.0%}..{max(rec['mlp']):.0%}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from hooked_vivit.analysis import pipeline
    from hooked_vivit.output_dir import OutputDir

    with OutputDir(args.out, overwrite=args.overwrite, inputs=[_local_dir(args.model)], writer="hooked-vivit study") as out:
        model = pipeline.load_model(args.model, args.device)
        studies = pipeline.run_study(model, args.domain, args.pairs, out, progress=not args.quiet)
    for st in studies:
        g = st["mlp_minus_attn"]
        print(f"{st['domain']}: MLP - attention recovery {g['mean']:+.1%} [{g['ci95'][0]:+.1%}, {g['ci95'][1]:+.1%}] over {st['pairs']} pairs")
    print(f"wrote {args.out}/report.html")
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
    import torch
    import transformers

    from hooked_vivit import HookedVideoTransformer
    from hooked_vivit.config import to_dtype
    from hooked_vivit.loading import resolve_checkpoint
    from hooked_vivit.parity import compare
    from hooked_vivit.video import load_video, preprocess

    from hooked_vivit import organism

    path = resolve_checkpoint(organism.model_source(args.model))
    dtype = to_dtype(args.dtype)
    hooked = HookedVideoTransformer.from_pretrained(path, device=args.device, dtype=dtype)  # class by model_type
    # A backbone has no classifier.
    hf_names = {"vivit": ("VivitModel", "VivitForVideoClassification"), "videomae": ("VideoMAEModel", "VideoMAEForVideoClassification")}
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


MODEL_HELP = "checkpoint directory, hub id or organism name (actions = organism, outcomes); default: the action organism"


def _cmd_validate(args: argparse.Namespace) -> int:
    from hooked_vivit.analysis import validation
    from hooked_vivit.output_dir import OutputDir

    with OutputDir(args.out, overwrite=args.overwrite, writer="hooked-vivit validate") as out:
        data = validation.validate(args.model, args.planted, n_pairs=args.pairs, domains=args.domain, sanity_pairs=args.sanity_pairs,
                                   attribution_pairs=args.attribution_pairs, n_controls=args.controls, progress=not args.quiet)
        validation.write_validation(out, data)
    print(validation.validation_markdown(data))
    print(f"wrote {args.out}/validation.md and validation.json")
    return 0


def _organism_name(text: str) -> str:
    from hooked_vivit import organism

    if organism.resolve(text) is None:
        raise argparse.ArgumentTypeError(f"unknown organism {text!r}; expected one of {sorted(organism.ORGANISMS)} (or organism = actions)")
    return organism.resolve(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hooked-vivit", description="Hooked ViViT: interpretability for video transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a checkpoint and describe the hooked model")
    info.add_argument("--model", required=True, help="checkpoint directory, hub id or organism name (actions = organism, outcomes)")
    info.add_argument("--device", default="cpu", type=_device)
    info.add_argument("--hooks", action="store_true", help="list every hook name")
    info.set_defaults(func=_cmd_info)

    render = sub.add_parser("render", help="render a procedural minimal pair to mp4 files")
    render.add_argument("--domain", required=True, choices=["bowling", "golf", "basketball"])
    render.add_argument("--seed", type=_int_at_least(0), default=4_000_000,
                        help="render seed; 4,000,000-6,999,999 are held out from the organism (default: 4,000,000)")
    render.add_argument("--frames", type=_int_at_least(8, 1024), default=32)
    render.add_argument("--size", type=_int_at_least(32, 2048, even=True), default=224, help="frame size in pixels (even)")
    render.add_argument("--fps", type=_finite(0.0, strict=True), default=25.0)
    render.add_argument("--out", required=True, type=Path)
    render.add_argument("--overwrite", action="store_true", help="replace an earlier render output (never other files)")
    render.set_defaults(func=_cmd_render)

    analyze = sub.add_parser("analyze", help="the reference paper's whole analysis of one pair, as a report")
    analyze.add_argument("--clean", type=Path, help="positive video file (e.g. the strike)")
    analyze.add_argument("--corrupted", type=Path, help="negative video file (e.g. the gutter ball)")
    analyze.add_argument("--domain", default="bowling", choices=["bowling", "golf", "basketball"], help="render a pair (without --clean/--corrupted)")
    analyze.add_argument("--seed", type=_int_at_least(0), default=4_000_000,
                         help="render seed; 4,000,000-6,999,999 are held out from the organism (default: 4,000,000)")
    analyze.add_argument("--model", default="organism", help=MODEL_HELP)
    analyze.add_argument("--device", default="cpu", type=_device)
    analyze.add_argument("--probe-pairs", type=_probe_pairs, default=100, help="rendered pairs for the outcome probes (0: skip)")
    analyze.add_argument("--out", type=Path, required=True)
    analyze.add_argument("--overwrite", action="store_true", help="replace an earlier analyze output (never other files)")
    analyze.add_argument("--quiet", action="store_true")
    analyze.set_defaults(func=_cmd_analyze)

    study = sub.add_parser("study", help="(a), (b) and (f) over many rendered pairs, with bootstrap intervals")
    study.add_argument("--domain", nargs="+", default=["bowling", "golf"], choices=["bowling", "golf", "basketball"])
    study.add_argument("--pairs", type=_int_at_least(3), default=50)
    study.add_argument("--model", default="organism", help=MODEL_HELP)
    study.add_argument("--device", default="cpu", type=_device)
    study.add_argument("--out", type=Path, required=True)
    study.add_argument("--overwrite", action="store_true", help="replace an earlier study output (never other files)")
    study.add_argument("--quiet", action="store_true")
    study.set_defaults(func=_cmd_study)

    parity = sub.add_parser("parity", help="compare the hooked model with transformers on a checkpoint (exit 1 above tolerance)")
    parity.add_argument("--model", default="organism", help=MODEL_HELP)
    parity.add_argument("--video", type=Path, help="a clip to run (default: seeded random pixels)")
    parity.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parity.add_argument("--device", default="cpu", type=_device)
    parity.add_argument("--seed", type=_int_at_least(0), default=0)
    parity.add_argument("--tol", type=_finite(0.0, strict=False), default=None, help="override the dtype's tolerance (fp32 1e-5, fp16 1e-2, bf16 5e-2)")
    parity.set_defaults(func=_cmd_parity)

    from hooked_vivit.planted import NAMES as PLANTED

    validate = sub.add_parser("validate", help="every method against known mechanisms: planted models and both organisms, as a table")
    validate.add_argument("--model", nargs="*", type=_organism_name, default=["actions", "outcomes"], help="organisms (default: both)")
    validate.add_argument("--planted", nargs="*", choices=PLANTED, default=list(PLANTED), help="planted models (default: all)")
    validate.add_argument("--domain", nargs="+", default=["bowling", "golf", "basketball"], choices=["bowling", "golf", "basketball"])
    validate.add_argument("--pairs", type=_int_at_least(5), default=50, help="held-out pairs per domain (default 50)")
    validate.add_argument("--sanity-pairs", type=_int_at_least(0), default=10, help="pairs for the whole-residual patch check")
    validate.add_argument("--attribution-pairs", type=_int_at_least(0), default=10, help="pairs for attribution vs real patching")
    validate.add_argument("--controls", type=_int_at_least(1), default=4, help="random equal-size boxes per pair for the ablation")
    validate.add_argument("--out", type=Path, required=True)
    validate.add_argument("--overwrite", action="store_true", help="replace an earlier validate output (never other files)")
    validate.add_argument("--quiet", action="store_true")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError, TypeError, MemoryError) as e:
        message = str(e.args[0]) if type(e) is KeyError and e.args else str(e)  # KeyError's str() is a repr
        one_line = " ".join(line.strip() for line in message.splitlines() if line.strip()) or type(e).__name__
        print(f"hooked-vivit {args.command}: error: {one_line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
