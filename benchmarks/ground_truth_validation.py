"""The shipped validation table: ``python -m benchmarks.ground_truth_validation [--pairs N]``.

Runs ``hooked-vivit validate`` (hooked_vivit.analysis.validation) on the planted models and both
organisms, keeps its results beside each organism (validation.json), regenerates both model cards
(which quote the table) and writes the table into README.md between its markers. Options as the
command's; ``--from-json`` reuses a validate output instead of running it again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hooked_vivit import organism
from hooked_vivit.analysis import validation
from hooked_vivit.analysis.report import to_jsonable
from hooked_vivit.organism.evaluate import VALIDATION_FILE, write_model_card

ROOT = Path(__file__).resolve().parent.parent


def ship(data: dict) -> str:
    for name in organism.ORGANISMS:
        path = organism.checkpoint_path(name)
        (path / VALIDATION_FILE).write_text(json.dumps(to_jsonable(data), indent=1) + "\n")
        write_model_card(
            path, json.loads((path / "metrics.json").read_text()), json.loads((path / "probes.json").read_text())
        )
    table = validation.validation_markdown(data)
    validation.insert_table(ROOT / "README.md", table)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--sanity-pairs", type=int, default=50)
    p.add_argument("--attribution-pairs", type=int, default=50)
    p.add_argument("--controls", type=int, default=4)
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
        )
        validation.write_validation(args.out, data, overwrite=True)  # replaces only an earlier validate output
    print(ship(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
