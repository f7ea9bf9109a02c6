"""The ladder in the validation report: validate(ladder=True) keeps it in validation.json, validation.md
shows its table (numbers equal to the JSON's) and the sentence per method saying where it breaks, ladder.png
has integer level ticks and labelled axes, the benchmark writes it into README between its markers only,
and the CLI's flags."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks import ground_truth_validation as bench
from hooked_vivit import cli
from hooked_vivit.analysis import ladder, validation

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 4)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = validation.validate(
            (),
            ("single_head", "null"),
            n_pairs=5,
            null_pairs=5,
            methods=(),
            progress=False,
            ladder=True,
            ladder_pairs=3,
            ladder_null_pairs=5,
            ladder_levels=LEVELS,
        )
    finally:
        torch.set_num_threads(n)
    out = tmp_path_factory.mktemp("validate") / "out"
    validation.write_validation(out, data)
    return data, out


def _fmt(r: dict) -> str:
    """A table cell from the JSON's numbers, written independently of ladder._cell."""
    if r["n"] == 0:
        return f"n/a ({r['undecided']} undecided)"
    lo, hi = r["ci95"]
    cell = f"{r['k']}/{r['n']} = {round(100 * r['k'] / r['n'])}% [{round(100 * lo)}%, {round(100 * hi)}%]"
    return cell + (f", {r['undecided']} undecided" if r["undecided"] else "")


def test_validation_json_holds_the_ladder(run):
    data, out = run
    saved = json.loads((out / "validation.json").read_text())
    lad = saved["ladder"]
    assert saved["settings"]["ladder"] is True
    assert lad["settings"]["n_pairs"] == 3 and lad["settings"]["null_pairs"] == 5
    assert [s["level"] for s in lad["settings"]["levels"]] == list(LEVELS)
    # recall per planted model, method and level; the null's false-positive rate per method and level
    assert set(lad["recall"]) == {"single_head"} and set(lad["false_positive"]) == set(ladder.METHODS)
    dla = {r["level"]: r for r in lad["recall"]["single_head"]["dla"]}
    assert (dla[1]["k"], dla[1]["n"], dla[4]["k"], dla[4]["n"]) == (3, 3, 0, 3)
    assert dla[4]["ci95"][0] == 0.0 and dla[4]["ci95"][1] == pytest.approx(0.70760, abs=1e-5)  # 1 - 0.025 ** (1/3)
    rec = {r["level"]: r for r in lad["false_positive"]["recovery"]}
    assert [(rec[k]["k"], rec[k]["n"]) for k in LEVELS] == [(0, 5), (0, 5)]
    assert rec[1]["ci95"][1] == pytest.approx(0.52182, abs=1e-5)  # 1 - 0.025 ** (1/5)
    # breaks: the first level with recall below 50 % (dla breaks on single_head at the hardest level)
    assert lad["breaks_below"] == 0.5 and lad["breaks"]["single_head"]["dla"] == 4
    assert lad["breaks"]["single_head"]["recovery"] is None
    assert lad["breaks"] == ladder.breaks(lad)
    # the null's test: levels whose false-positive interval lies above 5 %
    assert lad["null_fails"]["recovery"] == []
    for m, levels in lad["null_fails"].items():
        fp = {r["level"]: r for r in lad["false_positive"][m]}
        assert levels == [k for k in LEVELS if fp[k]["ci95"] is not None and fp[k]["ci95"][0] > 0.05]
    assert lad["seconds"] > 0


def test_markdown_numbers_equal_the_json(run):
    data, out = run
    md = (out / "validation.md").read_text()
    lad = json.loads((out / "validation.json").read_text())["ladder"]
    rows = [ln for ln in md.splitlines() if re.match(r"\| (single_head|null) \| \d ", ln)]
    assert len(rows) == len(lad["rows"]) == 4
    for line, row in zip(rows, lad["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["model"] and cells[1].startswith(f"{row['level']} (")
        assert cells[2] == ("false-positive rate" if row["null"] else "recall")
        assert cells[3:] == [_fmt(row["rates"][m]) for m in ladder.METHODS]
    assert "| single_head | 4 (1.2, 0.05) | recall |" in md
    # one sentence per method, from breaks(): dla breaks on single_head at level 4 with its recall
    sentences = {m: ln for ln in md.splitlines() for m in ladder.METHODS if ln.startswith(f"- `{m}` ")}
    assert set(sentences) == set(ladder.METHODS)
    assert "breaks (recall below 50%) on single_head at level 4 (recall 0/3 = 0% [0%, 71%])" in sentences["dla"]
    assert "holds (recall at least 50%) at every level run on single_head" in sentences["recovery"]
    assert "on the null (5 pairs per level) false positives 0/5 = 0% [0%, 52%] at every level" in sentences["recovery"]
    # the figure and its generated caption (models and pairs behind it)
    assert "![ladder](ladder.png)" in md
    assert "on the planted models single_head (3 pairs per model and level, seeds 0..2)" in md
    assert "null model's false-positive rate (5 pairs per level, seeds 0..4)" in md
    # the validation table alone (README's validation block) leaves the ladder out
    assert "ladder" not in validation.validation_markdown(data, ladder=False).split("\n\n", 1)[1]


def test_figure_has_integer_level_ticks_and_labelled_axes(run):
    data, out = run
    png = out / "ladder.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = ladder.ladder_plot(data["ladder"])
    axes = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title().split(":")[0] for ax in axes] == ["single_head", "null"]
    for ax in axes:
        assert list(ax.get_xticks()) == list(LEVELS)
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in LEVELS]
        assert "level" in ax.get_xlabel() and "(% of pairs)" in ax.get_ylabel()
    assert axes[0].get_ylabel().startswith("recall") and axes[1].get_ylabel().startswith("false-positive rate")
    # the dla line on single_head: 100 % at level 1, 0 % at level 4
    dla = next(c for c in axes[0].containers if c.get_label() == "dla")
    assert list(dla.lines[0].get_ydata()) == [100.0, 0.0]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_readme_insertion_replaces_exactly_the_marked_block(run, tmp_path):
    data, _ = run
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    before = readme.read_text()
    assert before.count(ladder.BEGIN) == 1 and before.count(ladder.END) == 1
    head, rest = before.split(ladder.BEGIN)
    _, tail = rest.split(ladder.END)
    text = bench.ship_ladder(data, readme)
    after = readme.read_text()
    assert after == head + ladder.BEGIN + "\n" + text + ladder.END + tail
    assert text == ladder.ladder_section(data["ladder"]) and "![ladder]" not in text
    bench.ship_ladder(data, readme)  # again: the same file
    assert readme.read_text() == after
    # the validation table's block is untouched
    assert (
        after.split(validation.BEGIN)[1].split(validation.END)[0]
        == before.split(validation.BEGIN)[1].split(validation.END)[0]
    )
    readme.write_text(before.replace(ladder.END, ""))
    with pytest.raises(ValueError, match="needs one"):
        bench.ship_ladder(data, readme)
    with pytest.raises(ValueError, match="no ladder"):
        bench.ship_ladder({k: v for k, v in data.items() if k != "ladder"}, readme)


def test_cli_ladder_flags():
    p = cli.build_parser()
    args = p.parse_args(["validate", "--out", "x"])
    assert (args.ladder, args.ladder_pairs, args.ladder_null_pairs) == (True, 20, 100)
    args = p.parse_args(["validate", "--out", "x", "--no-ladder", "--ladder-pairs", "7", "--ladder-null-pairs", "150"])
    assert (args.ladder, args.ladder_pairs, args.ladder_null_pairs) == (False, 7, 150)
    with pytest.raises(SystemExit):
        p.parse_args(["validate", "--out", "x", "--ladder-null-pairs", "99"])
