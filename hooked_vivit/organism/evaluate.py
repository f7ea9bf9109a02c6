"""Outcome probes on the organism and its model card: ``python -m hooked_vivit.organism.evaluate``.

For held-out minimal pairs of every domain with an outcome, a linear probe per layer reads the
hidden outcome (strike vs gutter, in vs miss, make vs miss) from the CLS token and from the
mean over tokens of the residual stream, split by pair, with a shuffled-label control.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hooked_vivit import synthetic
from hooked_vivit.analysis.experiments import probe_features
from hooked_vivit.analysis.pipeline import rendered_probe_pairs
from hooked_vivit.model import HookedViViT
from hooked_vivit.organism import checkpoint_path
from hooked_vivit.organism.data import SPLIT_SEEDS, write_seed_ranges
from hooked_vivit.probes import probe_accuracy


def outcome_probes(model: HookedViViT, n_pairs: int = 60) -> dict:
    out = {}
    for domain in ("bowling", "golf", "basketball"):
        seed0 = SPLIT_SEEDS["probe"] + 10_000 * list(synthetic.DOMAINS).index(domain)
        f = probe_features(model, rendered_probe_pairs(model, domain, n_pairs, seed0))
        target = model.cfg.label2id[synthetic.DOMAINS[domain]]
        out[domain] = {
            "pairs": n_pairs,
            "both_outcomes_classified_as_action": float((f["predictions"] == target).mean()),
            "layers": [f"resid_pre {l}" for l in range(model.cfg.n_layers)] + [f"resid_post {model.cfg.n_layers - 1}"],
            **{kind: [probe_accuracy(feat, f["labels"], f["groups"]).to_dict() for feat in f[kind]] for kind in ("cls", "mean")},
        }
    return out


def write_model_card(path: Path, metrics: dict, probes: dict) -> None:
    tc = metrics["train_config"]
    stages, m = [], metrics
    while m:  # each fine-tuning stage records the metrics of the one before
        stages.insert(0, m)
        m = m.get("previous_stage")
    first = stages[0]["train_config"]
    total_min = sum(m["train_seconds"] + m["render_seconds"] for m in stages) / 60
    lines = [
        "# hooked-vivit organism",
        "",
        "A small ViViT (model 1, joint space-time attention) trained on the procedurally rendered action clips of",
        "`hooked_vivit.synthetic`, shipped so that every analysis runs offline on a model that means something.",
        "It loads like ViViT-B: `HookedViViT.from_pretrained(hooked_vivit.organism.checkpoint_path())`, and",
        "`transformers.VivitForVideoClassification.from_pretrained` reads the same directory.",
        "",
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
        f"- {first['train_per_class']} training clips per class (seeds 0..), {tc['val_per_class']} validation (seeds 1,000,000..), "
        f"{tc['test_per_class']} test (seeds 2,000,000..): every nuisance (colours, textures, geometry, camera, lighting,",
        "  speeds, start times) differs between splits. Clips are mirrored at random during training.",
        "- Within-class outcomes (bowling strike / gutter, golf in / miss, basketball make / miss) are balanced and were",
        "  never labels: the organism, like ViViT-B, calls both outcomes by the action's name.",
        "",
        "## Training",
        *[
            f"- Stage {i + 1}: `python -m hooked_vivit.organism.train --out DIR"
            + (f" --init-from STAGE{i} --fresh-data --epochs {m['train_config']['epochs']} --lr {m['train_config']['lr']}"
               + (f" --data-offset {m['train_config']['data_offset']}" if m["train_config"].get("data_offset") is not None else "") + "`"
               if m["train_config"].get("init_from") else "`")
            + f" (seed {m['train_config']['seed']}): AdamW lr {m['train_config']['lr']}, weight decay {m['train_config']['weight_decay']}, "
            f"batch {m['train_config']['batch_size']}, {m['train_config']['epochs']} epoch{'s' if m['train_config']['epochs'] != 1 else ''}, cosine schedule"
            + (", a fresh rendered training set every epoch" if m["train_config"].get("fresh_data") else f", {m['train_config']['train_per_class']} clips per class")
            + f"; {m['train_seconds'] / 60:.1f} min (+{m['render_seconds']:.0f} s rendering), final validation accuracy {m['history'][-1]['val_accuracy']:.1%}."
            for i, m in enumerate(stages)
        ],
        f"- In all {total_min:.1f} min on {metrics['device']} with {metrics['torch_threads']} threads.",
        "",
        "## Accuracy (held-out test seeds)",
        f"- Overall: {metrics['test_accuracy']:.1%}",
        "",
        "| class | accuracy |",
        "|---|---|",
        *[f"| {k} | {v:.1%} |" for k, v in metrics["test_accuracy_per_class"].items()],
        "",
        "| class / hidden outcome | classified as the class |",
        "|---|---|",
        *[f"| {k} | {v:.1%} |" for k, v in metrics["test_accuracy_per_outcome"].items()],
        "",
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
        lines += [
            f"### {domain} ({res['pairs']} pairs; both outcomes classified as the action: {res['both_outcomes_classified_as_action']:.0%})",
            "",
            "| layer | CLS acc | CLS control | mean-token acc | mean-token control |",
            "|---|---|---|---|---|",
        ]
        for name, c, m in zip(res["layers"], res["cls"], res["mean"]):
            lines.append(f"| {name} | {c['accuracy']:.0%} | {c['control_accuracy']:.0%} | {m['accuracy']:.0%} | {m['control_accuracy']:.0%} |")
        lines.append("")
    (path / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    from hooked_vivit.output_dir import record_written

    record_written(path, "MODEL_CARD.md", "probes.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--pairs", type=int, default=60)
    args = p.parse_args(argv)
    path = args.checkpoint or checkpoint_path()
    model = HookedViViT.from_pretrained(path)
    metrics = json.loads((path / "metrics.json").read_text())
    probes = outcome_probes(model, args.pairs)
    (path / "probes.json").write_text(json.dumps(probes, indent=2) + "\n")
    write_model_card(path, metrics, probes)
    write_seed_ranges(path)  # the seeds this checkpoint has seen, for the analysis defaults' disjointness
    print((path / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
