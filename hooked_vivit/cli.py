"""The ``hooked-vivit`` command."""

from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from hooked_vivit import HookedViViT

    model = HookedViViT.from_pretrained(args.model, device=args.device)
    print(model)
    if args.hooks:
        for name in model.hook_dict:
            print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hooked-vivit", description="Hooked ViViT: interpretability for video transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a checkpoint and describe the hooked model")
    info.add_argument("--model", required=True, help="checkpoint directory or hub id")
    info.add_argument("--device", default="cpu")
    info.add_argument("--hooks", action="store_true", help="list every hook name")
    info.set_defaults(func=_cmd_info)
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
