"""The ``hooked-vivit`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    from hooked_vivit import HookedViViT

    model = HookedViViT.from_pretrained(args.model, device=args.device)
    print(model)
    if args.hooks:
        for name in model.hook_dict:
            print(name)
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    import json

    import cv2

    from hooked_vivit import synthetic
    from hooked_vivit.atomic import atomic_directory
    from hooked_vivit.video import write_video

    pos, neg, meta = synthetic.render_pair(args.domain, args.seed, num_frames=args.frames, size=args.size)
    with atomic_directory(args.out) as tmp:
        write_video(pos, tmp / "positive.mp4", fps=args.fps)
        write_video(neg, tmp / "negative.mp4", fps=args.fps)
        grid = synthetic.frame_grid([pos, neg], labels=[meta["outcomes"]["positive"], meta["outcomes"]["negative"]])
        cv2.imwrite(str(tmp / "frames.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        (tmp / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "masks"}, indent=2) + "\n")
    print(f"wrote {args.out}: positive.mp4 ({meta['outcomes']['positive']}), negative.mp4 "
          f"({meta['outcomes']['negative']}), diverging at frame {meta['divergence_frame']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hooked-vivit", description="Hooked ViViT: interpretability for video transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a checkpoint and describe the hooked model")
    info.add_argument("--model", required=True, help="checkpoint directory or hub id")
    info.add_argument("--device", default="cpu")
    info.add_argument("--hooks", action="store_true", help="list every hook name")
    info.set_defaults(func=_cmd_info)

    render = sub.add_parser("render", help="render a procedural minimal pair to mp4 files")
    render.add_argument("--domain", required=True, choices=["bowling", "golf", "basketball"])
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--frames", type=int, default=32)
    render.add_argument("--size", type=int, default=224)
    render.add_argument("--fps", type=float, default=25.0)
    render.add_argument("--out", required=True, type=Path)
    render.set_defaults(func=_cmd_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"hooked-vivit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
