"""The shipped validation table: ``python -m benchmarks.ground_truth_validation [--pairs N]``.

Runs ``hooked-vivit validate`` (hooked_vivit.analysis.validation) on the planted models and both
organisms, with the planted models' difficulty ladder (``--ladder-pairs`` per model and level,
``--ladder-null-pairs`` per level of the null), keeps its results beside each organism
(validation.json), regenerates both model cards (which quote the table and the ladder) and writes the
table into README.md between its markers, and the ladder's table with the sentence per method saying
where it breaks between the ladder markers (``hooked_vivit.analysis.ladder.BEGIN`` / ``END``). Options
as the command's; ``--from-json`` reuses a validate output instead of running it again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hooked_vivit import organism
from hooked_vivit.analysis import ladder, validation
from hooked_vivit.analysis.report import to_jsonable
from hooked_vivit.organism.evaluate import VALIDATION_FILE, write_model_card

ROOT = Path(__file__).resolve().parent.parent


def ship_ladder(data: dict, readme: Path = ROOT / "README.md") -> str:
    """The ladder's section (table and where each method breaks; no figure) between README's ladder
    markers; returns it."""
    if not data.get("ladder"):
        raise ValueError("this validate output has no ladder (run it with the ladder)")
    text = ladder.ladder_section(data["ladder"])
    ladder.insert_section(readme, text)
    return text


def _round(x: object) -> object:
    """Floats to 6 significant digits, recursively."""
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def ship(data: dict) -> str:
    for name in organism.ORGANISMS:
        path = organism.checkpoint_path(name)
        # compact, 6 significant digits: the per-pair values the verdicts read make the indented file ~2 MB
        # per organism; the model card's table (validation_markdown) reads the same from either
        (path / VALIDATION_FILE).write_text(json.dumps(_round(to_jsonable(data)), separators=(",", ":")) + "\n")
        write_model_card(
            path, json.loads((path / "metrics.json").read_text()), json.loads((path / "probes.json").read_text())
        )
    table = validation.validation_markdown(data, ladder=False)
    validation.insert_table(ROOT / "README.md", table)
    if data.get("ladder"):
        table += "\n" + ship_ladder(data)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--sanity-pairs", type=int, default=50)
    p.add_argument("--attribution-pairs", type=int, default=50)
    p.add_argument("--controls", type=int, default=4)
    p.add_argument("--ladder", action=argparse.BooleanOptionalAction, default=True, help="the ladder (default: on)")
    p.add_argument("--ladder-pairs", type=int, default=20)
    p.add_argument("--ladder-null-pairs", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("validation_out"))
    p.add_argument("--from-json", type=Path, help="a validation.json written by hooked-vivit validate")
    args = p.parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        data = validation.validate(
            n_pairs=args.pairs,
            sanity_pairs=args.sanity_pairs,
            attribution_pairs=args.attribution_pairs,
            n_controls=args.controls,
            ladder=args.ladder,
            ladder_pairs=args.ladder_pairs,
            ladder_null_pairs=args.ladder_null_pairs,
        )
        validation.write_validation(args.out, data, overwrite=True)  # replaces only an earlier validate output
    print(ship(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
