"""The organism's multi-pair study on held-out seeds: ``python -m benchmarks.organism_study [--pairs N]``.

Writes the study report (``--out``), the compact summary shipped with the organism
(hooked_vivit/organism/checkpoint/study_summary.json, which ``analyze`` uses to place a single pair
in the distribution) and the closing tables (docs/organism_study.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hooked_vivit.analysis import pipeline
from hooked_vivit.analysis.report import to_jsonable

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument("--outcome-pairs", type=int, default=20)
    p.add_argument("--probe-pairs", type=int, default=100, help="pairs for the probes (default: 100)")
    p.add_argument("--domain", nargs="+", default=["bowling", "golf"])
    p.add_argument("--out", type=Path, default=Path("study_organism"))
    p.add_argument("--raw", type=Path, help="also keep every number of the studies here (JSON)")
    args = p.parse_args(argv)
    model = pipeline.load_model("actions")
    studies = pipeline.run_study(
        model,
        args.domain,
        args.pairs,
        args.out,
        outcome_pairs=args.outcome_pairs,
        probe_pairs=args.probe_pairs,
        overwrite=True,
    )
    if args.raw:
        args.raw.write_text(json.dumps(to_jsonable(studies)))
    summary = pipeline.study_summary(model, studies)
    from hooked_vivit import organism

    (organism.checkpoint_path() / pipeline.STUDY_SUMMARY).write_text(
        json.dumps(to_jsonable(summary), separators=(",", ":")) + "\n"
    )
    (ROOT / "docs" / "organism_study.md").write_text(pipeline.study_tables_markdown(summary))
    print((ROOT / "docs" / "organism_study.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
