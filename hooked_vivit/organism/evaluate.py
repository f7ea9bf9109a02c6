"""Outcome probes on an organism and its model card: ``python -m hooked_vivit.organism.evaluate [--model outcomes]``.

For held-out minimal pairs of every domain with an outcome, a linear probe per layer reads the
hidden outcome (strike vs gutter, in vs miss, make vs miss) from the CLS token and from the
mean over tokens of the residual stream, split by pair, with a shuffled-label control.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from hooked_vivit import synthetic
from hooked_vivit.analysis.experiments import layer_probes, probe_features
from hooked_vivit.analysis.pipeline import rendered_probe_pairs
from hooked_vivit.analysis.validation import BEGIN, END, validation_markdown
from hooked_vivit.causal.probes import probe_accuracy
from hooked_vivit.model import HookedViViT
from hooked_vivit.organism import checkpoint_path, resolve
from hooked_vivit.organism.data import (
    HELD_OUT_FILE,
    HELD_OUT_OFFSET,
    SEED_RANGES_FILE,
    SPLIT_SEEDS,
    clip_seed,
    render_split,
    to_pixels,
    used_seed_ranges,
    write_seed_ranges,
)


def outcome_probes(model: HookedViViT, n_pairs: int = 60, *, cross_validated: bool = False) -> dict:
    """Per domain: how the pairs are classified, and a probe per layer (one split by pair; with
    ``cross_validated``, also repeated grouped 5-fold with bootstrap intervals over pairs)."""
    out = {}
    labels = model.cfg.label2id
    for domain in ("bowling", "golf", "basketball"):
        seed0 = SPLIT_SEEDS["probe"] + 10_000 * list(synthetic.DOMAINS).index(domain)
        f = probe_features(model, rendered_probe_pairs(model, domain, n_pairs, seed0))
        outcomes = synthetic.OUTCOMES[synthetic.DOMAINS[domain]]
        res: dict = {"pairs": n_pairs}
        if all(
            f"{domain} {o}" in labels for o in outcomes
        ):  # the outcome is the label: rows are (positive, negative) per pair
            target = np.tile([labels[f"{domain} {o}"] for o in outcomes], n_pairs)
            res["outcome_classified_correctly"] = float((f.predictions == target).mean())
        else:
            res["both_outcomes_classified_as_action"] = float(
                (f.predictions == labels[synthetic.DOMAINS[domain]]).mean()
            )
        res["layers"] = [f"resid_pre {l}" for l in range(model.cfg.n_layers)] + [f"resid_post {model.cfg.n_layers - 1}"]
        for kind, per_layer in (("cls", f.cls), ("mean", f.mean)):
            res[kind] = [probe_accuracy(feat, f.labels, f.groups).to_dict() for feat in per_layer]
        if cross_validated:
            cv = layer_probes(model, None, features=f, random_weights=False).to_json()  # per layer only
            res["cross_validated"] = {
                "method": cv["method"],
                **{kind: cv[kind] for kind in ("cls", "mean", "pixels", "pixels_mean")},
            }
        out[domain] = res
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % by default)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def held_out_accuracy(
    model: HookedViViT, classes, per_class: int, offset: int = HELD_OUT_OFFSET, chunk: int = 50
) -> dict:
    """Accuracy on freshly rendered test clips of seeds clip_seed("test", offset).. (``per_class`` per class,
    rendered ``chunk`` per class at a time): per class and overall with Wilson 95 % intervals, and at the
    action level (a clip whose predicted class is of its action counts: twin outcomes merged)."""
    from hooked_vivit.organism.train import predict

    names = [label for label, _, _ in classes]
    action = np.array([a for _, a, _ in classes])
    if list(model.cfg.id2label.values()) != names:
        raise ValueError(f"the model's classes {list(model.cfg.id2label.values())} are not {names}")
    preds, labels = [], []
    for start in range(0, per_class, chunk):
        n = min(chunk, per_class - start)
        clips, y, _ = render_split(
            "test", n, model.cfg.num_frames, model.cfg.image_size[0], classes, offset=offset + start
        )
        preds.append(predict(model, to_pixels(clips)).numpy())
        labels.append(y)
    pred, y = np.concatenate(preds), np.concatenate(labels)

    def summary(hits: np.ndarray) -> dict:
        lo, hi = wilson_interval(int(hits.sum()), len(hits))
        return {"accuracy": float(hits.mean()), "ci95": [lo, hi], "clips": len(hits)}

    return {
        "first_seed": clip_seed("test", offset),
        "last_seed": clip_seed("test", offset + per_class - 1),
        "per_class": {name: summary(pred[y == c] == c) for c, name in enumerate(names)},
        "overall": summary(pred == y),
        "action": summary(action[pred] == action[y]),
    }


def _val_by_epoch(stage: dict) -> str:
    return ", ".join(f"{h['val_accuracy']:.0%}" for h in stage["history"])


def _starting_point(tc: dict) -> str:
    """The training options that differ from init_weights and plain cross-entropy, as a card phrase."""
    parts = []
    if tc.get("init_from"):  # a later stage starts from the checkpoint: only the token supervision applies
        tc = {k: v for k, v in tc.items() if k not in ("pos_init", "cls_init_std")}
    if tc.get("pos_init", "normal") != "normal":
        parts.append("position embeddings started from a 3-D sine-cosine table of (frame slot, row, column)")
    if tc.get("cls_init_std"):
        parts.append(f"the CLS token from normal(0, {tc['cls_init_std']:g})")
    if tc.get("token_supervision"):
        layers = ", ".join(map(str, tc["token_supervision"]))
        parts.append(
            f"every patch token at layer{'s' if len(tc['token_supervision']) > 1 else ''} {layers} also predicting the label "
            f"(weight {tc.get('token_supervision_weight', 0.5):g}; training-only linear heads, not in the checkpoint)"
        )
    return "".join(f", {p}" for p in parts)


def _training_data(metrics: dict, stages: list[dict]) -> str:
    """Per stage: clips per class (of which actions), fresh or fixed, and the train seeds it used."""
    ranges = used_seed_ranges(metrics)
    parts = []
    for i, stage in enumerate(stages):
        tc = stage["train_config"]
        train = [r for r in ranges if r["use"] == f"train (stage {i + 1})"]
        seeds = f"seeds {min(r['first'] for r in train):,}..{max(r['last'] for r in train):,}"
        which = f" of {', '.join(tc['actions'])}" if tc.get("actions") else ""
        how = "a fresh set every epoch" if tc.get("fresh_data") else "the same set every epoch"
        parts.append(
            f"{'stage ' + str(i + 1) + ': ' if len(stages) > 1 else ''}{tc['train_per_class']} per class{which}, {how} ({seeds})"
        )
    return "; ".join(parts)


def _stage_command(tc: dict, index: int) -> str:
    """The training command of a stage: the options whose values differ from its task's defaults (the
    previous stage's checkpoint is STAGE{index})."""
    from hooked_vivit.organism.train import TASK_DEFAULTS, TrainConfig

    task = tc.get("task", "actions")
    default = dataclasses.asdict(TrainConfig(**TASK_DEFAULTS[task]))
    words = ["python -m hooked_vivit.organism.train --out DIR"] + ([f"--task {task}"] if task != "actions" else [])
    unflagged = []  # TrainConfig fields the command line does not set
    for field, value in tc.items():
        if field == "d_mlp" and value == 4 * tc["d_model"]:  # --d-model sets d_mlp to 4 x d_model
            continue
        if field == "task" or field not in default:
            continue
        was = default[field]
        if isinstance(was, tuple):
            was = list(was)
        if value == was:
            continue
        flag = "--" + field.replace("_", "-")
        if field in ("num_frames", "size", "weight_decay", "flip", "d_mlp"):
            unflagged.append(f"{field}={value}")
        elif field == "init_from":
            words.append(f"{flag} STAGE{index}")
        elif isinstance(value, bool):
            words.append(flag if value else f"--no-{field.replace('_', '-')}")
        elif field == "repeat":
            words += [f'{flag} "{action}" {times}' for action, times in value.items()]
        elif field == "actions":
            words.append(flag + "".join(f' "{a}"' if " " in a else f" {a}" for a in value))
        elif isinstance(value, list):
            words.append(flag + "".join(f" {v}" for v in value))
        else:
            words.append(f"{flag} {value}")
    return " ".join(words) + (f" (TrainConfig: {', '.join(unflagged)})" if unflagged else "")


def write_model_card(path: Path, metrics: dict, probes: dict, held_out: dict | None = None) -> None:
    """MODEL_CARD.md from metrics.json, the probes, the larger held-out test (default: held_out.json beside it,
    if any) and validation.json."""
    if held_out is None and (path / HELD_OUT_FILE).exists():
        held_out = json.loads((path / HELD_OUT_FILE).read_text())
    tc = metrics["train_config"]
    stages, m = [], metrics
    while m:  # each fine-tuning stage records the metrics of the one before
        stages.insert(0, m)
        m = m.get("previous_stage")
    task = tc.get("task", "actions")
    total_min = sum(m["train_seconds"] + m["render_seconds"] for m in stages) / 60
    cpu = [m.get("cpu_seconds") for m in stages]
    if task == "outcomes":
        intro = [
            "# hooked-vivit ground-truth organism (`outcomes`)",
            "",
            "A small ViViT (model 1, joint space-time attention) trained on the procedurally rendered clips of `hooked_vivit.synthetic`",
            "with the outcome as the label: bowling strike / gutter, golf in / miss, basketball make / miss, and the three actions",
            "without an outcome. It must carry the outcome, so it is the positive control for every method that looks for one",
            "(the action organism, `organism.load()`, is the negative control: its outcomes were never labels).",
            'It loads with `hooked_vivit.organism.load("outcomes")` (`--model outcomes` in every command), and',
            '`transformers.VivitForVideoClassification.from_pretrained(hooked_vivit.organism.checkpoint_path("outcomes"))` reads it too.',
            "",
        ]
        outcome_line = [
            "- Both outcome classes of an action are rendered from the same seeds: every training scene appears as a minimal",
            "  pair (strike and gutter), so nothing but the outcome tells the two classes apart.",
        ]
    else:
        intro = [
            "# hooked-vivit organism",
            "",
            "A small ViViT (model 1, joint space-time attention) trained on the procedurally rendered action clips of",
            "`hooked_vivit.synthetic`, shipped so that every analysis runs offline on a model that means something.",
            "It loads like ViViT-B: `HookedViViT.from_pretrained(hooked_vivit.organism.checkpoint_path())`, and",
            "`transformers.VivitForVideoClassification.from_pretrained` reads the same directory.",
            "",
        ]
        outcome_line = [
            "- Within-class outcomes (bowling strike / gutter, golf in / miss, basketball make / miss) are balanced and were",
            "  never labels: the organism, like ViViT-B, calls both outcomes by the action's name.",
        ]
    goal = []
    if task == "outcomes":  # the accuracy asked of a ground truth, and the action-level accuracy (twin outcomes merged)
        cm = np.asarray(metrics["confusion_matrix"]["rows_true_cols_pred"])
        names = metrics["confusion_matrix"]["classes"]
        action = [n.rsplit(" ", 1)[0] if n.split(" ")[0] in synthetic.DOMAINS else n for n in names]
        same = np.array([[a == b for b in action] for a in action])
        per_outcome = {n: metrics["test_accuracy_per_class"][n] for n in names if n.split(" ")[0] in synthetic.DOMAINS}
        met = metrics["test_accuracy"] >= 0.95 and min(per_outcome.values()) >= 0.9
        worst = min(per_outcome, key=per_outcome.get)
        goal = [
            "## Goal",
            "",
            f"- Asked of a ground truth: >= 95 % held-out accuracy overall and >= 90 % on every outcome class. This checkpoint: "
            f"{metrics['test_accuracy']:.1%} overall, outcome classes {min(per_outcome.values()):.0%} ({worst}) to "
            f"{max(per_outcome.values()):.0%}: "
            + (
                "met."
                if met
                else f"**not met** on these {tc['test_per_class']} clips per class (see the larger test below)."
                if held_out
                else "**not met**; it carries the outcome only as far as the "
                "per-class accuracies below show, so read the validation verdicts of this organism in that light."
            ),
            f"- The action (twin outcomes merged): {(cm * same).sum() / cm.sum():.1%} correct.",
        ]
        if held_out:
            outcome_rows = {n: r for n, r in held_out["per_class"].items() if n in per_outcome}
            low = min(outcome_rows, key=lambda n: outcome_rows[n]["accuracy"])
            met_here = held_out["overall"]["accuracy"] >= 0.95 and outcome_rows[low]["accuracy"] >= 0.9
            ci = held_out["overall"]["ci95"]
            goal += [
                f"- A larger held-out test ({held_out['per_class'][names[0]]['clips']} fresh clips per class, test seeds "
                f"{held_out['first_seed']:,}..{held_out['last_seed']:,}, rendered by `evaluate.py` after training from seeds "
                f"no stage trained, validated or tested on): {held_out['overall']['accuracy']:.1%} [{ci[0]:.1%}, {ci[1]:.1%}] overall, "
                f"outcome classes {outcome_rows[low]['accuracy']:.1%} ({low}, [{outcome_rows[low]['ci95'][0]:.1%}, "
                f"{outcome_rows[low]['ci95'][1]:.1%}]) to {max(r['accuracy'] for r in outcome_rows.values()):.1%}, the action "
                f"{held_out['action']['accuracy']:.1%}: " + ("met." if met_here else "**not met**."),
                "",
                "| class | held-out accuracy | 95 % interval |",
                "|---|---|---|",
                *(
                    f"| {n} | {r['accuracy']:.1%} | [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] |"
                    for n, r in held_out["per_class"].items()
                ),
            ]
        goal.append("")
    lines = [
        *intro,
        *goal,
        "## Model",
        f"- {tc['num_frames']} frames of {tc['size']}x{tc['size']} px, tubelets {tuple(tc['tubelet'])}: "
        f"1 + {tc['num_frames'] // tc['tubelet'][0]}x{tc['size'] // tc['tubelet'][1]}x{tc['size'] // tc['tubelet'][2]} tokens",
        f"- d_model {tc['d_model']}, {tc['n_layers']} layers, {tc['n_heads']} heads, d_mlp {tc['d_mlp']}, gelu_fast, "
        f"{metrics['parameters'] / 1e6:.2f}M parameters, model.safetensors {metrics['file_bytes'] / 1e6:.1f} MB",
        "- Pixel normalisation exactly ViViT-B's (rescale 1/127.5 with offset, mean = std = 0.5); clips are rendered at",
        "  the model's size, so `hooked_vivit.video.preprocess(frames, config=model.cfg)` needs no resize.",
        "",
        "## Data",
        f"- Classes: {', '.join(metrics['confusion_matrix']['classes'])}.",
        f"- Training clips: {_training_data(metrics, stages)}; {tc['val_per_class']} validation (seeds 1,000,000..), "
        f"{tc['test_per_class']} test (seeds 2,000,000..): every nuisance (colours, textures, geometry, camera, lighting,",
        "  speeds, start times) differs between splits. Clips are mirrored at random during training.",
        *outcome_line,
        "",
        "## Training",
        *[
            f"- Stage {i + 1}: `{_stage_command(m['train_config'], i)}`"
            + f" (seed {m['train_config']['seed']}): AdamW lr {m['train_config']['lr']}, weight decay {m['train_config']['weight_decay']}, "
            f"batch {m['train_config']['batch_size']}, {m['train_config']['epochs']} epoch{'s' if m['train_config']['epochs'] != 1 else ''}, "
            f"{m['train_config'].get('schedule', 'cosine')} schedule"
            + (
                f" after {m['train_config']['warmup_steps']} warm-up steps"
                if m["train_config"].get("warmup_steps")
                else ""
            )
            + (
                f", on the {', '.join(m['train_config']['actions'])} classes only (a classifier among them)"
                if m["train_config"].get("actions")
                else ""
            )
            + (
                ", a fresh rendered training set every epoch"
                if m["train_config"].get("fresh_data")
                else f", {m['train_config']['train_per_class']} clips per class"
            )
            + (
                ", each minimal pair in one batch and mirrored alike (`--paired-batches`)"
                if m["train_config"].get("paired_batches")
                else ""
            )
            + _starting_point(m["train_config"])
            + f"; {m['train_seconds'] / 60:.1f} min (+{m['render_seconds']:.0f} s rendering)"
            + (f", {m['cpu_seconds'] / 60:.1f} min of process CPU time" if m.get("cpu_seconds") is not None else "")
            + f", final validation accuracy {m['history'][-1]['val_accuracy']:.1%}"
            + (" among its classes" if m["train_config"].get("actions") else "")
            + f" (by epoch: {_val_by_epoch(m)})."
            for i, m in enumerate(stages)
        ],
        f"- In all {total_min:.1f} min (wall) on {metrics['device']} with {metrics['torch_threads']} threads"
        + (
            f", {sum(cpu) / 60:.1f} min of process CPU time (the machine was shared: wall time counts other processes' load)."
            if all(c is not None for c in cpu)
            else "."
        ),
        "",
        "## Accuracy (held-out test seeds)",
        f"- Overall: {metrics['test_accuracy']:.1%}",
        "",
        "| class | accuracy |",
        "|---|---|",
        *[f"| {k} | {v:.1%} |" for k, v in metrics["test_accuracy_per_class"].items()],
        "",
        *(
            []
            if task == "outcomes"
            else [
                "| class / hidden outcome | classified as the class |",
                "|---|---|",
                *[f"| {k} | {v:.1%} |" for k, v in metrics["test_accuracy_per_outcome"].items()],
                "",
            ]
        ),
        "Confusion matrix (rows: true, columns: predicted, order as above):",
        "",
        "```",
        *[" ".join(f"{n:4d}" for n in row) for row in metrics["confusion_matrix"]["rows_true_cols_pred"]],
        "```",
        "",
        "## Can the hidden outcome be read out of each layer?",
        "",
        "Linear probe (logistic regression) per layer on held-out minimal pairs (split by pair, so a probe never sees",
        "either clip of a test pair), with a control task (labels shuffled by pair); selectivity = accuracy - control.",
        "",
    ]
    for domain, res in probes.items():
        how = (
            f"outcome classified correctly: {res['outcome_classified_correctly']:.0%}"
            if "outcome_classified_correctly" in res
            else f"both outcomes classified as the action: {res['both_outcomes_classified_as_action']:.0%}"
        )
        lines += [
            f"### {domain} ({res['pairs']} pairs; {how})",
            "",
            "| layer | CLS acc | CLS control | mean-token acc | mean-token control |",
            "|---|---|---|---|---|",
        ]
        for name, c, m in zip(res["layers"], res["cls"], res["mean"]):
            lines.append(
                f"| {name} | {c['accuracy']:.0%} | {c['control_accuracy']:.0%} | {m['accuracy']:.0%} | {m['control_accuracy']:.0%} |"
            )
        lines.append("")
        cv = res.get("cross_validated")
        if cv:
            lines += [
                f"Cross-validated ({cv['method']}):",
                "",
                "| layer | CLS accuracy | CLS paired accuracy | control | mean-token accuracy |",
                "|---|---|---|---|---|",
            ]
            for name, c, m in zip(res["layers"], cv["cls"], cv["mean"]):
                lines.append(
                    f"| {name} | {c['accuracy']:.0%} [{c['accuracy_ci95'][0]:.0%}, {c['accuracy_ci95'][1]:.0%}] | "
                    f"{c['paired_accuracy']:.0%} [{c['paired_accuracy_ci95'][0]:.0%}, {c['paired_accuracy_ci95'][1]:.0%}] | "
                    f"{c['control_accuracy']:.0%} | {m['accuracy']:.0%} [{m['accuracy_ci95'][0]:.0%}, {m['accuracy_ci95'][1]:.0%}] |"
                )
            px = cv["pixels"]
            lines += [
                "",
                f"Pixel baseline (each tubelet's mean colour): {px['accuracy']:.0%} [{px['accuracy_ci95'][0]:.0%}, {px['accuracy_ci95'][1]:.0%}].",
                "",
            ]
    validation = path / VALIDATION_FILE
    lines += [
        "## Validation against known mechanisms",
        "",
        "Every method of the analysis run on held-out minimal pairs of both organisms and the planted models",
        '(`hooked-vivit validate`; README, "Ground truth"):',
        "",
        BEGIN,
        *(
            [validation_markdown(json.loads(validation.read_text())).rstrip("\n")]
            if validation.exists()
            else ["(not run yet)"]
        ),
        END,
        "",
    ]
    (path / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    from hooked_vivit.output_dir import record_written

    record_written(path, "MODEL_CARD.md", "probes.json")


VALIDATION_FILE = "validation.json"  # hooked-vivit validate's results, shipped beside the card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="checkpoint directory (default: the --model organism's)"
    )
    p.add_argument("--model", default=None, help="organism name (actions, outcomes; default actions)")
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument(
        "--cross-validated",
        action="store_true",
        help="also repeated grouped k-fold probes with intervals (default for outcomes)",
    )
    p.add_argument(
        "--held-out-per-class",
        type=int,
        default=None,
        help=f"clips per class of a larger held-out test from test seeds {SPLIT_SEEDS['test'] + HELD_OUT_OFFSET:,}.. "
        "(default: 500 for the outcomes task, none for actions)",
    )
    args = p.parse_args(argv)
    path = Path(args.checkpoint or checkpoint_path(args.model))
    model = HookedViViT.from_pretrained(path)
    metrics = json.loads((path / "metrics.json").read_text())
    task = metrics["train_config"].get("task", "actions")
    cv = args.cross_validated or task == "outcomes" or resolve(args.model) == "outcomes"
    probes = outcome_probes(model, args.pairs, cross_validated=cv)
    per_class = args.held_out_per_class if args.held_out_per_class is not None else (500 if task == "outcomes" else 0)
    held_out = None
    if per_class > 0:
        from hooked_vivit.organism import task_classes

        first, last = clip_seed("test", HELD_OUT_OFFSET), clip_seed("test", HELD_OUT_OFFSET + per_class - 1)
        seen = [r for r in used_seed_ranges(metrics, probes) if r["first"] <= last and first <= r["last"]]
        if seen:  # the held-out clips must be new to this checkpoint
            raise ValueError(
                f"the held-out test's seeds {first:,}..{last:,} overlap seeds this checkpoint used: {seen}"
            )
        held_out = held_out_accuracy(model, task_classes(task), per_class)
    from hooked_vivit.output_dir import record_written

    (path / "probes.json").write_text(json.dumps(probes, indent=2) + "\n")
    if held_out:
        (path / HELD_OUT_FILE).write_text(json.dumps(held_out, indent=2) + "\n")
        record_written(path, HELD_OUT_FILE)
    write_model_card(path, metrics, probes, held_out)
    write_seed_ranges(path)  # the seeds this checkpoint has seen, for the analysis defaults' disjointness
    record_written(path, SEED_RANGES_FILE)  # part of this output: an overwrite may replace it
    print((path / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
