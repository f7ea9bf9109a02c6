"""Train a model organism: ``python -m hooked_vivit.organism.train --out DIR [--task outcomes]``.

Seeded; uses a GPU when present. The default configuration (the action organism) trains in about
20 minutes on 2 CPU cores; ``--task outcomes`` trains the ground-truth organism, whose labels are the
outcomes (see organism.task_classes); ``--smoke`` runs a seconds-long version of every step (CI runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hooked_vivit.config import HookedViViTConfig
from hooked_vivit.model import HookedViViT
from hooked_vivit.organism import task_classes
from hooked_vivit.organism.data import render_split, to_pixels


@dataclass
class TrainConfig:
    num_frames: int = 16
    size: int = 96
    tubelet: tuple[int, int, int] = (2, 16, 16)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 512
    train_per_class: int = 700
    val_per_class: int = 30
    test_per_class: int = 100
    epochs: int = 10
    batch_size: int = 24
    lr: float = 1e-3
    weight_decay: float = 0.05
    flip: bool = True
    fresh_data: bool = False  # render a new training set every epoch (no clip is seen twice)
    # Keep each minimal pair (both outcome classes of one scene) in one batch, mirrored alike: the
    # gradient then comes from what differs between the two, the outcome (see pair_batches).
    paired_batches: bool = False
    init_from: str | None = None  # continue from a checkpoint (a fine-tuning stage)
    data_offset: int | None = (
        None  # fresh data starts at clip index data_offset * train_per_class (default: 11 when fine-tuning)
    )
    # Starting points (all still learned: the checkpoint stays a plain ViViT). init_weights draws the position
    # embeddings from normal(0, 0.02) (HF: zeros), far below the patch embeddings: the model starts nearly
    # blind to where and when a token is. It starts the CLS token at 0, as HF, so the first CLS query is 0
    # and no gradient reaches layer 0's W_Q through it.
    # pos_init: "normal" (init_weights') or "sincos" (a 3-D sine-cosine table of (frame slot, row, column)).
    pos_init: str = "normal"
    cls_init_std: float = 0.0  # the CLS token starts as normal(0, cls_init_std); 0: zeros
    # Deep supervision, training only: at each of these layers every patch token predicts the clip's label
    # through its own linear head (dropped after training), weighted token_supervision_weight against the CLS loss.
    token_supervision: tuple[int, ...] = ()
    token_supervision_weight: float = 0.5
    # Train on these actions' classes only (a curriculum stage): the loss, the token heads and the validation
    # read only those classes' rows of the task's classifier, so the stage is a classifier among its own
    # classes and the other rows get no gradient (weight decay still shrinks them). None: every class.
    actions: tuple[str, ...] | None = None
    # Each scene of these actions is seen this many times per epoch (each time mirrored anew): {action: times}.
    repeat: dict[str, int] = dataclasses.field(default_factory=dict)
    schedule: str = "cosine"  # after the warm-up: "cosine" (to 0 at the end) or "constant"
    warmup_steps: int | None = None  # linear warm-up; None: a twentieth of all steps
    seed: int = 0
    task: str = "actions"  # organism.task_classes: "actions" or "outcomes" (the outcome is the label)

    @classmethod
    def smoke(cls) -> TrainConfig:
        return cls(
            num_frames=8,
            size=32,
            tubelet=(2, 16, 16),
            d_model=32,
            n_layers=2,
            n_heads=2,
            d_mlp=64,
            train_per_class=4,
            val_per_class=2,
            test_per_class=2,
            epochs=1,
            batch_size=8,
        )


# Per task, what differs from TrainConfig's defaults (the action organism's). The ground-truth organism is
# deeper (6 layers, room for "from layer 4 on") and narrower (the same cost per clip on 2 cores), and sees a
# fresh rendered set every epoch (paired: both outcomes of a scene, see data.render_split).
TASK_DEFAULTS = {
    "actions": {},
    "outcomes": {
        "d_model": 96,
        "d_mlp": 384,
        "n_layers": 6,
        # 4-frame tubelets: half the tokens of (2, 16, 16), so twice the steps in the same time, and one
        # tubelet sees a ball at four positions.
        "tubelet": (4, 16, 16),
        # A make and a miss hold the same objects, in other places at other times: from init_weights alone the
        # model is nearly blind to both. With these three (and lr 5e-4) a 9-class run learns bowling and golf
        # but leaves basketball at chance; a basketball-only stage first (--actions "shooting basketball",
        # --schedule constant --warmup-steps 50) learns make vs miss, and this 9-class stage from it keeps it.
        # Without the token loss the basketball-only pilot stayed at chance (the other two were not ablated
        # one by one).
        # The shipped organism's stages: its MODEL_CARD.
        "pos_init": "sincos",
        "cls_init_std": 1.0,
        "token_supervision": (1, 3),
        "lr": 5e-4,
        "train_per_class": 500,
        "epochs": 29,
        "fresh_data": True,
        "paired_batches": True,
    },
}
MODEL_NAMES = {"actions": "hooked-vivit-organism", "outcomes": "hooked-vivit-outcome-organism"}


def model_config(tc: TrainConfig) -> HookedViViTConfig:
    labels = [label for label, _, _ in task_classes(tc.task)]
    return HookedViViTConfig(
        d_model=tc.d_model,
        d_head=tc.d_model // tc.n_heads,
        n_heads=tc.n_heads,
        n_layers=tc.n_layers,
        d_mlp=tc.d_mlp,
        num_frames=tc.num_frames,
        image_size=tc.size,
        tubelet_size=tc.tubelet,
        n_classes=len(labels),
        id2label=dict(enumerate(labels)),
        model_name=MODEL_NAMES[tc.task],
        device="cpu",
    )


def sincos_positions(grid: tuple[int, int, int], d_model: int) -> torch.Tensor:
    """[prod(grid), d_model] sine-cosine codes of each token's (frame slot, row, column), in the patch
    tokens' (t, h, w) order: about a third of the dimensions per axis, as sin/cos pairs whose frequencies
    (k + 1) * pi / (2 n) span an axis of n positions (rows are distinct, entries in [-1, 1])."""
    dims = [d_model // 3 // 2 * 2] * 3
    dims[0] += d_model - sum(dims)
    if dims[0] % 2:
        raise ValueError(f"sincos position init needs an even d_model, got {d_model}")
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid), indexing="ij")
    parts = []
    for pos, d, n in zip(axes, dims, grid):
        angle = pos.flatten()[:, None] * (torch.arange(d // 2, dtype=torch.float64) + 1) * math.pi / (2 * n)
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, 1).float()


def init_for_training(model: HookedViViT, tc: TrainConfig) -> None:
    """HF's initialisation (init_weights), then tc's starting points for the position embeddings and CLS token."""
    model.init_weights(seed=tc.seed)
    cfg = model.cfg
    with torch.no_grad():
        if tc.pos_init == "sincos":
            model.pos_embed.W_pos[1:] = sincos_positions(cfg.grid.shape, cfg.d_model)  # row 0 (CLS) keeps its init
        elif tc.pos_init != "normal":
            raise ValueError(f"pos_init must be 'normal' or 'sincos', got {tc.pos_init!r}")
        if tc.cls_init_std:
            gen = torch.Generator().manual_seed(tc.seed + 1)
            model.embed.cls_token.copy_(torch.randn(cfg.d_model, generator=gen) * tc.cls_init_std)


def training_classes(classes, actions: tuple[str, ...] | None) -> tuple[tuple, torch.Tensor]:
    """The task's classes a stage trains on (those of ``actions``; None: all) and, per trained class, its
    label in the task: a curriculum stage keeps the task's classifier and labels."""
    known = [action for _, action, _ in classes]
    if actions is not None and (not actions or set(actions) - set(known)):
        raise ValueError(f"actions must be among {sorted(set(known))}, got {list(actions)}")
    trained = tuple(classes) if actions is None else tuple(c for c in classes if c[1] in actions)
    names = [label for label, _, _ in classes]
    return trained, torch.tensor([names.index(label) for label, _, _ in trained])


def repeat_units(units: list[list[int]], trained, repeat: dict[str, int]) -> list[list[int]]:
    """Each unit of an action in ``repeat`` listed that many times (the others once), in order. Row
    i * len(trained) + c is clip i of trained class c (render_split), so a unit's action is its first row's."""
    unknown = set(repeat) - {action for _, action, _ in trained}
    if unknown or any(times < 1 for times in repeat.values()):
        raise ValueError(f"repeat takes trained actions and counts >= 1, got {repeat}")
    return [u for u in units for _ in range(repeat.get(trained[u[0] % len(trained)][1], 1))]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate's multiplier at ``step``: a linear warm-up over ``warmup`` steps, then cosine
    (to 0 at ``total``) or constant."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    after = 0.5 * (1 + math.cos(math.pi * min(1.0, step / total))) if schedule == "cosine" else 1.0
    return min(1.0, (step + 1) / warmup) * after


def scene_units(classes, per_class: int) -> list[list[int]]:
    """Row indices of render_split's output grouped by scene: row i * len(classes) + c is clip i of class c,
    and the classes of one action at the same i are one scene in each outcome (a minimal pair)."""
    actions = [action for _, action, _ in classes]
    units = []
    for i in range(per_class):
        for action in dict.fromkeys(actions):
            units.append([i * len(classes) + c for c, a in enumerate(actions) if a == action])
    return units


def pair_batches(units: list[list[int]], batch_size: int, generator: torch.Generator) -> list[list[list[int]]]:
    """Shuffled batches of whole units (a minimal pair is never split), each a list of units: a batch
    takes units until it holds at least batch_size rows."""
    batches, batch, rows = [], [], 0
    for u in torch.randperm(len(units), generator=generator).tolist():
        batch.append(units[u])
        rows += len(units[u])
        if rows >= batch_size:
            batches.append(batch)
            batch, rows = [], 0
    return batches + ([batch] if batch else [])


def stage_loss(
    logits: torch.Tensor,
    token_logits: list[torch.Tensor],
    y: torch.Tensor,
    columns: torch.Tensor,
    token_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A stage's loss and its two parts, read over the trained classes' ``columns`` only: the CLS
    cross-entropy of logits [batch, classes] against ``y`` (an index into ``columns``), and the token
    cross-entropy of each head's [batch, tokens, classes] (every token carries its clip's label), averaged
    over the heads and weighted ``token_weight``. Returns (loss, CLS part, token part or None)."""
    cls_loss = F.cross_entropy(logits[:, columns], y)
    if not token_logits:
        return cls_loss, cls_loss, None
    token_loss = sum(
        F.cross_entropy(t[..., columns].flatten(0, 1), y.repeat_interleave(t.shape[1])) for t in token_logits
    ) / len(token_logits)
    return cls_loss + token_weight * token_loss, cls_loss, token_loss


@torch.no_grad()
def predict(
    model: HookedViViT, pixels: torch.Tensor, batch: int = 64, columns: torch.Tensor | None = None
) -> torch.Tensor:
    """The predicted class of each clip; with ``columns``, the argmax over those logits only (an index into them)."""
    model.eval()
    device = model.W_E.device
    preds = []
    for i in range(0, len(pixels), batch):
        logits = model(pixels[i : i + batch].to(device))
        preds.append((logits if columns is None else logits[:, columns.to(device)]).argmax(-1).cpu())
    return torch.cat(preds)


def confusion(pred: torch.Tensor, labels: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=int)
    for p, y in zip(pred.tolist(), labels.tolist()):
        m[y, p] += 1
    return m


def train(tc: TrainConfig, out: Path, *, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    torch.manual_seed(tc.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.time()
    cpu_start = time.process_time()
    classes = task_classes(tc.task)
    names = [label for label, _, _ in classes]
    trained, label_of = training_classes(classes, tc.actions)
    # Bad options fail here, before a minute of rendering.
    repeat_units([], trained, tc.repeat)
    lr_factor(0, 1, 1, tc.schedule)
    if tc.warmup_steps is not None and tc.warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {tc.warmup_steps}")
    previous = None
    if tc.init_from:
        model = HookedViViT.from_pretrained(tc.init_from)
        if list(model.cfg.id2label.values()) != names:
            raise ValueError(
                f"--init-from {tc.init_from} has classes {list(model.cfg.id2label.values())}, task {tc.task!r} has {names}"
            )
        prev_metrics = Path(tc.init_from) / "metrics.json"
        previous = json.loads(prev_metrics.read_text()) if prev_metrics.exists() else None
    else:
        model = HookedViViT(model_config(tc))
        init_for_training(model, tc)
    for layer in tc.token_supervision:
        if not 0 <= layer < model.cfg.n_layers:
            raise ValueError(f"token_supervision layers must be in 0..{model.cfg.n_layers - 1}, got {layer}")

    def train_set(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Fresh data: new seeds every epoch, past every earlier stage's (stage 1 uses 0..per_class-1).
        first = tc.data_offset if tc.data_offset is not None else (11 if tc.init_from else 0)
        offset = (epoch + first) * tc.train_per_class if tc.fresh_data else 0
        clips, labels, _ = render_split(
            "train",
            tc.train_per_class,
            tc.num_frames,
            tc.size,
            trained,
            progress=progress and epoch == 0,
            offset=offset,
        )
        # uint8 (4x smaller), normalised batch by batch; labels index ``trained`` (label_of maps them to the task's)
        return torch.from_numpy(clips), torch.from_numpy(labels)

    render_start = time.time()
    x_train, y_train = train_set(0)
    val_clips, val_y, _ = render_split("val", tc.val_per_class, tc.num_frames, tc.size, trained)
    x_val, val_y = to_pixels(val_clips), torch.from_numpy(val_y)
    render_s = time.time() - render_start

    model.to(device).train()
    columns = label_of.to(device)  # the trained classes' rows of the classifier (all of them without --actions)
    # Training-only heads: never saved, so the checkpoint is the plain ViViT.
    token_heads = torch.nn.ModuleList(
        [torch.nn.Linear(model.cfg.d_model, len(names)) for _ in tc.token_supervision]
    ).to(device)
    opt = torch.optim.AdamW([*model.parameters(), *token_heads.parameters()], lr=tc.lr, weight_decay=tc.weight_decay)
    token_resid: dict[int, torch.Tensor] = {}

    def keep_resid(layer: int):
        def hook(resid, hook):
            token_resid[layer] = resid  # not detached: the token loss trains the blocks below

        return hook

    token_hooks = [(f"blocks.{layer}.hook_resid_post", keep_resid(layer)) for layer in tc.token_supervision]
    units = scene_units(trained, tc.train_per_class) if tc.paired_batches else [[i] for i in range(len(x_train))]
    units = repeat_units(units, trained, tc.repeat)
    steps_per_epoch = len(pair_batches(units, tc.batch_size, torch.Generator().manual_seed(0)))
    total = steps_per_epoch * tc.epochs
    warmup = tc.warmup_steps or max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup, tc.schedule))
    gen = torch.Generator().manual_seed(tc.seed)
    history = []
    bar = tqdm(total=total, desc="train", disable=not progress)
    for epoch in range(tc.epochs):
        model.train()
        if tc.fresh_data and epoch > 0:
            x_train, y_train = train_set(epoch)
        losses, token_losses = [], []
        for batch in pair_batches(units, tc.batch_size, gen):
            idx = torch.tensor([row for unit in batch for row in unit])
            x = to_pixels(x_train[idx])
            if tc.flip:  # the actions read the same mirrored: a free doubling of the data
                # one draw per unit: both clips of a minimal pair are mirrored alike
                per_unit = torch.rand(len(batch), generator=gen) < 0.5
                flip = per_unit.repeat_interleave(torch.tensor([len(unit) for unit in batch]))
                x[flip] = x[flip].flip(-1)
            y = y_train[idx].to(device)
            with model.hooks(fwd_hooks=token_hooks):
                logits = model(x.to(device))
            token_logits = [head(token_resid[layer][:, 1:]) for layer, head in zip(tc.token_supervision, token_heads)]
            loss, cls_loss, token_loss = stage_loss(logits, token_logits, y, columns, tc.token_supervision_weight)
            if token_loss is not None:
                token_losses.append(token_loss.item())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(cls_loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        val_pred = predict(model, x_val, columns=label_of)  # among the trained classes
        val_acc = float((val_pred == val_y).float().mean())
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),  # the CLS cross-entropy
                **({"token_loss": float(np.mean(token_losses))} if token_losses else {}),
                "val_accuracy": val_acc,
                "val_accuracy_per_class": {
                    trained[c][0]: float((val_pred[val_y == c] == c).float().mean()) for c in range(len(trained))
                },
                "wall_seconds": round(time.time() - start, 1),
                "cpu_seconds": round(time.process_time() - cpu_start, 1),
            }
        )
        if progress:
            per_class = ", ".join(f"{k} {v:.0%}" for k, v in history[-1]["val_accuracy_per_class"].items())
            bar.write(f"epoch {epoch + 1}: validation {val_acc:.1%} ({per_class})")
    bar.close()
    train_s = time.time() - start - render_s

    model.eval().to("cpu")
    test_clips, test_y, test_outcomes = render_split("test", tc.test_per_class, tc.num_frames, tc.size, classes)
    pred = predict(model, to_pixels(test_clips))
    cm = confusion(pred, test_y, len(names))
    per_class = {names[c]: float(cm[c, c] / cm[c].sum()) for c in range(len(names))}
    per_outcome = {}
    for c, name in enumerate(names):
        for outcome in sorted({o for o, y in zip(test_outcomes, test_y) if y == c}):
            mask = np.array([(o == outcome and y == c) for o, y in zip(test_outcomes, test_y)])
            per_outcome[f"{name} / {outcome}"] = float((pred.numpy()[mask] == c).mean())
    path = model.save_pretrained(out, overwrite=True)
    metrics = {
        "train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in tc.__dict__.items()},
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "render_seconds": round(render_s, 1),
        "train_seconds": round(train_s, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),  # the process's CPU time: the machine may be shared
        "history": history,
        "test_accuracy": float(np.trace(cm) / cm.sum()),
        "test_accuracy_per_class": per_class,
        "test_accuracy_per_outcome": per_outcome,
        "confusion_matrix": {"classes": names, "rows_true_cols_pred": cm.tolist()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "previous_stage": previous,
        "file_bytes": (path / "model.safetensors").stat().st_size,
    }
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from hooked_vivit.output_dir import record_written

    record_written(path, "metrics.json")  # part of this output: a later training run into --out may replace it
    return metrics


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """The TrainConfig of a command line (the task's defaults, then each option given)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    p.add_argument("--smoke", action="store_true", help="tiny configuration: every step, in seconds")
    p.add_argument(
        "--task",
        choices=sorted(TASK_DEFAULTS),
        default="actions",
        help="actions: the action organism (default); outcomes: the ground-truth organism, the outcome is the label",
    )
    p.add_argument("--n-layers", type=int)
    p.add_argument("--tubelet", type=int, nargs=3, metavar=("T", "H", "W"), help="tubelet size in frames, px, px")
    p.add_argument("--n-heads", type=int)
    p.add_argument("--val-per-class", type=int)
    p.add_argument("--test-per-class", type=int)
    p.add_argument("--d-model", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--init-from", help="continue training this checkpoint (a fine-tuning stage)")
    p.add_argument(
        "--fresh-data",
        action=argparse.BooleanOptionalAction,
        help="render a new training set every epoch (default for --task outcomes)",
    )
    p.add_argument(
        "--paired-batches",
        action=argparse.BooleanOptionalAction,
        help="keep both clips of a minimal pair in one batch, mirrored alike (default for --task outcomes)",
    )
    p.add_argument(
        "--data-offset", type=int, help="fresh data starts at clip index N * train_per_class (unseen by earlier stages)"
    )
    p.add_argument(
        "--pos-init", choices=["normal", "sincos"], help="starting position embeddings (normal: init_weights')"
    )
    p.add_argument("--cls-init-std", type=float, help="the CLS token starts as normal(0, STD); 0: zeros")
    p.add_argument(
        "--token-supervision",
        type=int,
        nargs="*",
        metavar="LAYER",
        help="layers whose patch tokens each also predict the label (training-only heads); none: off",
    )
    p.add_argument("--token-supervision-weight", type=float, help="weight of that token loss (default 0.5)")
    p.add_argument(
        "--actions", nargs="+", metavar="ACTION", help="train on these actions' classes only (a curriculum stage)"
    )
    p.add_argument(
        "--repeat",
        nargs=2,
        action="append",
        metavar=("ACTION", "TIMES"),
        help="see each scene of ACTION TIMES times per epoch (repeatable)",
    )
    p.add_argument(
        "--schedule", choices=["cosine", "constant"], help="learning rate after the warm-up (default cosine)"
    )
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: a twentieth of all steps)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    tc = TrainConfig.smoke() if args.smoke else TrainConfig(**TASK_DEFAULTS[args.task])
    tc.task = args.task
    if args.tubelet:
        tc.tubelet = tuple(args.tubelet)
    if args.token_supervision is not None:
        tc.token_supervision = tuple(args.token_supervision)
    if args.actions:
        tc.actions = tuple(args.actions)
    if args.repeat:
        tc.repeat = {action: int(times) for action, times in args.repeat}
    if args.d_model:  # the MLP stays 4 x d_model
        tc.d_model, tc.d_mlp = args.d_model, 4 * args.d_model
    for field in (
        "epochs",
        "train_per_class",
        "seed",
        "lr",
        "init_from",
        "fresh_data",
        "paired_batches",
        "data_offset",
        "n_layers",
        "n_heads",
        "batch_size",
        "val_per_class",
        "test_per_class",
        "pos_init",
        "cls_init_std",
        "token_supervision_weight",
        "schedule",
        "warmup_steps",
    ):
        if getattr(args, field) is not None:
            setattr(tc, field, getattr(args, field))
    return tc, args


def main(argv: list[str] | None = None) -> int:
    tc, args = config_from_args(argv)
    metrics = train(tc, args.out, progress=not args.quiet)
    print(
        json.dumps(
            {k: metrics[k] for k in ("test_accuracy", "test_accuracy_per_class", "train_seconds", "file_bytes")},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
