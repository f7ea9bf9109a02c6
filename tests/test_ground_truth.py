"""The ground-truth organism (organism "outcomes") and ``hooked-vivit validate``: organisms load by
name, accuracy is recomputed on freshly rendered held-out clips, and the validation finds what the
planted models are known to hold."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from hooked_vivit import organism, synthetic
from hooked_vivit.analysis import pipeline, validation
from hooked_vivit.organism.data import SPLIT_SEEDS, clip_seed, recorded_seed_ranges, render_split, seed_use, to_pixels
from hooked_vivit.organism.train import TrainConfig, model_config, train

OUTCOME_LABELS = [
    "bowling strike",
    "bowling gutter",
    "golf in",
    "golf miss",
    "basketball make",
    "basketball miss",
    "juggling balls",
    "swinging pendulum",
    "skipping rope",
]


@pytest.fixture(scope="module")
def outcomes():
    return organism.load("outcomes")


def test_organism_names_resolve_in_one_place():
    assert organism.CLASSES is synthetic.ACTIONS
    assert [
        organism.resolve(n) for n in (None, "actions", "outcomes", "organism", "google/vivit-b-16x2-kinetics400")
    ] == ["actions", "actions", "outcomes", None, None]  # "organism" is no longer a name for the default
    assert organism.checkpoint_path() == organism.checkpoint_path("actions")
    assert organism.checkpoint_path("outcomes") != organism.checkpoint_path()
    assert organism.model_source("outcomes") == organism.checkpoint_path("outcomes")
    assert organism.model_source("some/dir") == "some/dir"
    with pytest.raises(ValueError, match="unknown organism 'bowling'"):
        organism.checkpoint_path("bowling")
    assert [label for label, _, _ in organism.task_classes("outcomes")] == OUTCOME_LABELS
    assert [label for label, _, _ in organism.task_classes("actions")] == list(synthetic.ACTIONS)
    with pytest.raises(ValueError, match="unknown task"):
        organism.task_classes("colours")


def test_outcome_organism_loads_by_name_everywhere(outcomes):
    cfg = outcomes.cfg
    assert cfg.n_layers >= 6 and list(cfg.id2label.values()) == OUTCOME_LABELS
    path = organism.checkpoint_path("outcomes")
    assert (path / "model.safetensors").stat().st_size <= 10e6
    assert {"config.json", "model.safetensors", "MODEL_CARD.md", "metrics.json", "probes.json", "seed_ranges.json"} <= {
        p.name for p in path.iterdir()
    }
    by_cli_name = pipeline.load_model("outcomes")
    assert all(torch.equal(a, b) for a, b in zip(by_cli_name.state_dict().values(), outcomes.state_dict().values()))
    assert pipeline.load_model(None).cfg.n_classes == len(synthetic.ACTIONS)  # the default stays the action organism


@pytest.mark.parametrize("name", ["actions", "outcomes"])
def test_accuracy_on_fresh_held_out_clips(name):
    """Recomputed from freshly rendered clips of test seeds past the ones the card's test set used
    (2,000,100.., never seen by training, validation, test or probes), not read from metrics.json."""
    model = organism.load(name)
    classes = organism.task_classes(name)
    per_class = 6
    clips, labels, _ = render_split(
        "test", per_class, model.cfg.num_frames, model.cfg.image_size[0], classes, offset=100
    )
    ranges = recorded_seed_ranges(organism.checkpoint_path(name))["used"]
    assert seed_use(SPLIT_SEEDS["test"] + 100, ranges) is None
    with torch.inference_mode():
        pred = torch.cat([model(to_pixels(clips[i : i + 18])).argmax(-1) for i in range(0, len(clips), 18)]).numpy()
    correct = pred == labels  # outcomes: the outcome class itself (strike vs gutter are different answers)
    action = np.array([a for _, a, _ in classes])
    same_action = action[pred] == action[labels]
    # Measured on this sample: actions 81 % (its card's 94.7 % is from test seeds 2,000,000..099 and reproduces
    # exactly; on 360 clips from 2,000,100 it scores 91.4 %); outcomes 100 % on the outcome classes and at the
    # action level (card: 97.6 % on its 100 test clips per class, 98.2 % on 500 per class from 2,001,000). Chance
    # is 1/6 and 1/9: the bounds fail a broken model or a broken renderer, not sampling noise (54 clips).
    class_bound, action_bound = {"actions": (0.7, 0.7), "outcomes": (0.9, 0.95)}[name]
    assert correct.mean() >= class_bound, f"{name}: {correct.mean():.0%} of {len(correct)} fresh clips"
    assert same_action.mean() >= action_bound, f"{name}: the action of {same_action.mean():.0%} of {len(correct)} clips"


def test_outcome_organism_names_the_action_of_fresh_pairs(outcomes):
    """Minimal pairs from the held-out analysis range carry their two outcome classes, and the organism
    calls both clips bowling (strike or gutter)."""
    pairs = validation.organism_pairs(outcomes, "bowling", 4)
    assert [p.classes for p in pairs] == [(0, 1)] * 4
    x = torch.cat([torch.cat([p.positive, p.negative]) for p in pairs])
    with torch.inference_mode():
        pred = outcomes(x).argmax(-1).tolist()
    assert sum(p in (0, 1) for p in pred) >= 7, pred


def test_validation_seeds_are_held_out_from_both_organisms():
    for name in ("actions", "outcomes"):
        ranges = recorded_seed_ranges(organism.checkpoint_path(name))["used"]
        for seed in (validation.VALIDATE_SEED0, validation.VALIDATE_SEED0 + 49):
            assert seed_use(seed, ranges) is None


def test_sincos_positions_code_frame_slot_row_and_column():
    from hooked_vivit.organism.train import sincos_positions

    grid, d = (4, 6, 6), 96
    table = sincos_positions(grid, d).double()
    assert table.shape == (4 * 6 * 6, 96)
    assert len({tuple(row) for row in table.round(decimals=6).tolist()}) == 4 * 6 * 6  # every token distinct
    # Rows follow the patch tokens' (t, h, w) order; 32 dims per axis: sin then cos of (k + 1) * pi / (2 n) * pos.
    t, h, w = 3, 2, 5
    row = table[t * 36 + h * 6 + w]
    k = torch.arange(16, dtype=torch.float64) + 1
    for offset, pos, n in ((0, t, 4), (32, h, 6), (64, w, 6)):
        torch.testing.assert_close(row[offset : offset + 16], torch.sin(pos * k * np.pi / (2 * n)), atol=1e-6, rtol=0)
        torch.testing.assert_close(
            row[offset + 16 : offset + 32], torch.cos(pos * k * np.pi / (2 * n)), atol=1e-6, rtol=0
        )
    with pytest.raises(ValueError, match="even d_model"):
        sincos_positions(grid, 97)


def test_training_init_options_start_from_init_weights_plus_positions_and_cls():
    from hooked_vivit.model import HookedViViT
    from hooked_vivit.organism.train import init_for_training, sincos_positions

    tc = TrainConfig.smoke()
    plain, started = HookedViViT(model_config(tc)), HookedViViT(model_config(tc))
    plain.init_weights(seed=tc.seed)
    init_for_training(started, tc)  # defaults ("normal", no CLS noise): init_weights exactly
    for (name, a), b in zip(plain.state_dict().items(), started.state_dict().values()):
        assert torch.equal(a, b), name
    tc.pos_init, tc.cls_init_std = "sincos", 1.0
    init_for_training(started, tc)
    W_pos = started.pos_embed.W_pos.detach()
    assert torch.equal(W_pos[0], plain.pos_embed.W_pos[0])  # the CLS token's row keeps its init
    grid = (tc.num_frames // 2, tc.size // 16, tc.size // 16)
    assert torch.equal(W_pos[1:], sincos_positions(grid, 32))
    expected_cls = torch.randn(32, generator=torch.Generator().manual_seed(tc.seed + 1))
    assert torch.equal(started.embed.cls_token.detach(), expected_cls)
    tc.pos_init = "learned"
    with pytest.raises(ValueError, match="pos_init must be"):
        init_for_training(started, tc)


def test_train_outcomes_task_smoke(tmp_path):
    tc = TrainConfig.smoke()
    tc.task, tc.paired_batches = "outcomes", True  # the outcomes task's default batching
    # The outcomes task's starting points and token supervision (here at the smoke model's layer 0).
    tc.pos_init, tc.cls_init_std, tc.token_supervision = "sincos", 1.0, (0,)
    metrics = train(tc, tmp_path / "gt", progress=False)
    assert np.isfinite(metrics["history"][0]["token_loss"]) and metrics["train_config"]["token_supervision"] == [0]
    # The token heads are training-only: the checkpoint holds exactly a plain model's weights.
    from safetensors.torch import load_file

    from hooked_vivit.model import HookedViViT

    saved_keys = set(load_file(tmp_path / "gt" / "model.safetensors"))
    plain = HookedViViT(model_config(tc))
    plain.save_pretrained(tmp_path / "plain")
    assert saved_keys == set(load_file(tmp_path / "plain" / "model.safetensors"))
    assert list(metrics["test_accuracy_per_class"]) == OUTCOME_LABELS
    assert metrics["confusion_matrix"]["classes"] == OUTCOME_LABELS
    assert model_config(tc).model_name == "hooked-vivit-outcome-organism"
    # The model card's training line is generated from metrics.json: its stage, batching and per-epoch accuracy.
    from hooked_vivit.organism.evaluate import write_model_card

    write_model_card(tmp_path / "gt", metrics, {})
    card = (tmp_path / "gt" / "MODEL_CARD.md").read_text()
    by_epoch = ", ".join(f"{h['val_accuracy']:.0%}" for h in metrics["history"])
    assert f"final validation accuracy {metrics['history'][-1]['val_accuracy']:.1%} (by epoch: {by_epoch})." in card
    assert ("each minimal pair in one batch" in card) == tc.paired_batches
    # One stage of 4 clips per class, rendered once (no --fresh-data): train seeds 0..3.
    assert "- Training clips: 4 per class, the same set every epoch (seeds 0..3); 2 validation" in card
    assert (
        "pair in one batch and mirrored alike (`--paired-batches`), position embeddings started from a 3-D sine-cosine"
        " table of (frame slot, row, column), the CLS token from normal(0, 1), every patch token at layer 0 also"
        " predicting the label (weight 0.5; training-only linear heads, not in the checkpoint);" in card
    )
    # With the larger held-out test (evaluate.py), the goal is judged on it too, from its numbers.
    from hooked_vivit.model import HookedViViT
    from hooked_vivit.organism.evaluate import held_out_accuracy

    held_out = held_out_accuracy(HookedViViT.from_pretrained(tmp_path / "gt"), organism.task_classes("outcomes"), 2)
    write_model_card(tmp_path / "gt", metrics, {}, held_out)
    card = (tmp_path / "gt" / "MODEL_CARD.md").read_text()
    outcome_accuracy = [held_out["per_class"][n]["accuracy"] for n in OUTCOME_LABELS[:6]]
    met = held_out["overall"]["accuracy"] >= 0.95 and min(outcome_accuracy) >= 0.9
    assert (
        f"- A larger held-out test (2 fresh clips per class, test seeds 2,001,000..2,001,001, rendered by `evaluate.py` "
        f"after training from seeds no stage trained, validated or tested on): {held_out['overall']['accuracy']:.1%}"
    ) in card
    assert card.count("**not met**") == (0 if met else 1) + (
        metrics["test_accuracy"] < 0.95 or min(metrics["test_accuracy_per_class"][n] for n in OUTCOME_LABELS[:6]) < 0.9
    )
    assert f"| golf miss | {held_out['per_class']['golf miss']['accuracy']:.1%} |" in card
    saved = json.loads((tmp_path / "gt" / "config.json").read_text())
    assert list(saved["id2label"].values()) == OUTCOME_LABELS
    # Both outcome classes of an action are rendered from the same seeds: the training set is made of minimal pairs.
    clips, labels, outs = render_split("train", 2, 8, 32, organism.task_classes("outcomes"))
    assert outs[:6] == ["strike", "gutter", "in", "miss", "make", "miss"]
    strike, gutter = clips[0], clips[1]
    div = synthetic.render_clip("bowling", 0, outcome="strike", num_frames=8, size=32).meta["divergence_frame"]
    assert np.array_equal(strike[:div], gutter[:div]) and not np.array_equal(strike, gutter)


def test_token_supervision_trains_the_blocks_below_it_and_checks_its_layers(tmp_path):
    """The token loss reaches the blocks under its layer (its hook keeps the graph): weighted 0 it changes
    nothing (the run equals one without token heads), weighted 5 it changes layer 0's weights."""
    from safetensors.torch import load_file

    runs = {}
    for layers, weight in (((), 0.5), ((0,), 0.0), ((0,), 5.0)):
        tc = TrainConfig.smoke()
        tc.token_supervision, tc.token_supervision_weight = layers, weight
        train(tc, tmp_path / f"{layers}{weight}", progress=False)
        runs[layers, weight] = load_file(tmp_path / f"{layers}{weight}" / "model.safetensors")
    off, inert, on = runs[(), 0.5], runs[(0,), 0.0], runs[(0,), 5.0]
    assert all(torch.equal(off[k], inert[k]) for k in off)
    layer0 = [k for k in off if re.search(r"\.layers?\.0\.", k)]  # either key layout of transformers
    assert layer0 and any(not torch.equal(off[k], on[k]) for k in layer0)
    tc = TrainConfig.smoke()
    tc.token_supervision = (2,)
    with pytest.raises(ValueError, match=r"token_supervision layers must be in 0\.\.1"):
        train(tc, tmp_path / "bad", progress=False)


def test_a_curriculum_stage_trains_some_actions_under_the_tasks_labels(tmp_path):
    from hooked_vivit.organism.train import init_for_training, training_classes

    classes = organism.task_classes("outcomes")
    trained, label_of = training_classes(classes, ("shooting basketball", "juggling balls"))
    assert [c[0] for c in trained] == ["basketball make", "basketball miss", "juggling balls"]
    assert label_of.tolist() == [4, 5, 6]
    assert training_classes(classes, None)[1].tolist() == list(range(9))
    with pytest.raises(ValueError, match="actions must be among"):
        training_classes(classes, ("curling",))
    tc = TrainConfig.smoke()
    tc.task, tc.paired_batches, tc.actions = "outcomes", True, ("shooting basketball",)
    tc.weight_decay = 0.0  # then a row without gradient stays exactly as it started
    metrics = train(tc, tmp_path / "stage", progress=False)
    assert metrics["train_config"]["actions"] == ["shooting basketball"]
    assert list(metrics["test_accuracy_per_class"]) == OUTCOME_LABELS  # tested on every class of the task
    # The stage is a classifier between its own classes: validated among them, and only their rows of the
    # task's classifier are trained.
    assert list(metrics["history"][0]["val_accuracy_per_class"]) == ["basketball make", "basketball miss"]
    from hooked_vivit.model import HookedViViT

    start = HookedViViT(model_config(tc))
    init_for_training(start, tc)
    stage = HookedViViT.from_pretrained(tmp_path / "stage")
    for name in ("W_U", "b_U"):
        before, after = getattr(start, name).detach(), getattr(stage, name).detach()
        others = [c for c in range(9) if c not in (4, 5)]
        assert torch.equal(before[..., others], after[..., others])
        assert not torch.equal(before[..., [4, 5]], after[..., [4, 5]])
    # predict's columns: the argmax among those logits, as an index into them.
    from hooked_vivit.organism.train import predict

    pixels = torch.randn(5, 8, 3, 32, 32)
    with torch.no_grad():
        logits = stage(pixels)
    assert torch.equal(predict(stage, pixels, columns=label_of), logits[:, label_of].argmax(-1))
    assert torch.equal(predict(stage, pixels), logits.argmax(-1))
    # A second stage from it, on every class: the card lists each stage's clips and train seeds.
    from hooked_vivit.organism.evaluate import write_model_card

    later = TrainConfig.smoke()
    later.task, later.init_from, later.fresh_data, later.data_offset = "outcomes", str(tmp_path / "stage"), True, 5
    metrics = train(later, tmp_path / "stage2", progress=False)
    write_model_card(tmp_path / "stage2", metrics, {})
    card = (tmp_path / "stage2" / "MODEL_CARD.md").read_text()
    assert (
        "- Training clips: stage 1: 4 per class of shooting basketball, the same set every epoch (seeds 0..3); "
        "stage 2: 4 per class, a fresh set every epoch (seeds 20..23);" in card
    )
    assert '--actions "shooting basketball"' in card and "--init-from STAGE1 --data-offset 5" in card


def test_bad_training_options_fail_before_rendering(tmp_path, monkeypatch):
    from hooked_vivit.organism import train as train_module

    def no_render(*args, **kwargs):
        raise AssertionError("rendered before checking the options")

    monkeypatch.setattr(train_module, "render_split", no_render)
    for field, value, message in (
        ("token_supervision", (2,), r"token_supervision layers must be in 0\.\.1"),
        ("repeat", {"curling": 2}, "repeat takes trained actions"),
        ("schedule", "linear", "schedule must be"),
        ("warmup_steps", 0, "warmup_steps must be >= 1"),
        ("actions", ("curling",), "actions must be among"),
    ):
        tc = TrainConfig.smoke()
        setattr(tc, field, value)
        with pytest.raises(ValueError, match=message):
            train_module.train(tc, tmp_path / "bad", progress=False)


def test_repeated_actions_and_the_learning_rate_schedules():
    from hooked_vivit.organism.train import lr_factor, repeat_units, scene_units

    classes = organism.task_classes("outcomes")
    units = scene_units(classes, 2)
    repeated = repeat_units(units, classes, {"shooting basketball": 3})
    basketball = [u for u in units if classes[u[0] % 9][1] == "shooting basketball"]
    assert [[4, 5], [13, 14]] == basketball  # rows i * 9 + c: clip i of classes 4 and 5
    assert len(repeated) == len(units) + 2 * 2
    assert all(repeated.count(u) == (3 if u in basketball else 1) for u in units)
    for bad in ({"curling": 2}, {"bowling": 0}):
        with pytest.raises(ValueError, match="repeat takes trained actions"):
            repeat_units(units, classes, bad)
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1 * 0.5 * (1 + np.cos(0)))
    assert lr_factor(50, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(4, 100, 10, "constant") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule must be"):
        lr_factor(0, 100, 10, "linear")


def test_paired_batches_keep_each_minimal_pair_together():
    """--paired-batches (the outcomes task's default): every scene unit is both outcome clips of one
    rendered scene, every batch holds whole units, and an epoch sees every row exactly once."""
    from hooked_vivit.organism.train import TASK_DEFAULTS, pair_batches, scene_units

    assert TASK_DEFAULTS["outcomes"]["paired_batches"] and not TrainConfig().paired_batches
    classes = organism.task_classes("outcomes")
    clips, labels, outs = render_split("train", 3, 8, 32, classes)
    units = scene_units(classes, 3)
    assert sorted(len(u) for u in units) == [1] * 9 + [2] * 9  # 3 scenes x (3 pairs + 3 single actions)
    for unit in units:
        if len(unit) == 2:
            a, b = unit
            assert classes[labels[a]][1] == classes[labels[b]][1] and outs[a] != outs[b]  # one action, two outcomes
            seed = clip_seed("train", a // len(classes))  # row i * len(classes) + c is clip i of class c
            div = synthetic.render_clip(classes[labels[a]][1], seed, num_frames=8, size=32).meta["divergence_frame"]
            assert np.array_equal(clips[a][:div], clips[b][:div]) and not np.array_equal(clips[a], clips[b])
    batches = pair_batches(units, 5, torch.Generator().manual_seed(0))
    rows = [r for batch in batches for unit in batch for r in unit]
    assert sorted(rows) == list(range(len(labels)))
    assert all(sum(map(len, batch)) >= 5 for batch in batches[:-1])
    assert all(unit in units for batch in batches for unit in batch)


# --------------------------------------------------------------------------------------------- validate
@pytest.fixture(scope="module")
def planted_results():
    torch.set_num_threads(1)
    data = validation.validate((), n_pairs=6, sanity_pairs=2, attribution_pairs=3, n_controls=3, progress=False)
    torch.set_num_threads(2)
    return {r["subject"]: r for r in data["subjects"]}, data


def _logit_diff(logits: torch.Tensor, c: int, o: int) -> torch.Tensor:
    return (logits[..., c] - logits[..., o]).double()


def _raw_patch_recovery(pm, seed: int, hook: str, head: int | None = None) -> float:
    """The logit-difference recovery of ``hook`` (its every position; with ``head``, that head of hook_z
    alone) patched from the positive run of ``pm.pair(seed, confound=True)`` into its negative run by a raw hook."""
    m, c, o = pm.model, pm.truth.positive, pm.truth.negative
    pos, neg = pm.pair(seed, confound=True)
    with torch.inference_mode():
        clean_logits, cache = m.run_with_cache(pos)
        corrupt = _logit_diff(m(neg), c, o)

        def patch(act, hook):
            if head is None:
                return cache[hook.name]
            act[:, :, head] = cache[hook.name][:, :, head]
            return act

        patched = _logit_diff(m.run_with_hooks(neg, fwd_hooks=[(hook, patch)]), c, o)
    clean = _logit_diff(clean_logits, c, o)
    return float(((patched - corrupt) / (clean - corrupt))[0])


def _cls_projection_by_hand(pm, seed: int, hook: str) -> float:
    """cls_projection of ``hook`` patched (raw hook): <a_patched - a_corrupt, a_clean - a_corrupt> /
    ||a_clean - a_corrupt||^2 at CLS of the last resid_post."""
    m = pm.model
    last = f"blocks.{m.cfg.n_layers - 1}.hook_resid_post"
    pos, neg = pm.pair(seed, confound=True)
    with torch.inference_mode():
        _, cache = m.run_with_cache(pos)
        _, corrupt = m.run_with_cache(neg, names_filter=[last])
        got = {}
        m.run_with_hooks(
            neg, fwd_hooks=[(hook, lambda a, hook: cache[hook.name]), (last, lambda a, hook: got.setdefault("a", a))]
        )
    a_clean, a_corrupt, a_patched = (x[0, 0].double() for x in (cache[last], corrupt[last], got["a"]))
    d = a_clean - a_corrupt
    return float((a_patched - a_corrupt) @ d / (d @ d))


def _atp_and_real_by_head(pm, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per head (layer-major): the attribution-patching estimate of patching its z from the positive into
    the negative run (dM/dz on the negative run . (z_clean - z_corrupt), M the logit difference) and the
    real change of M by a raw-hook patch."""
    m, c, o = pm.model, pm.truth.positive, pm.truth.negative
    L, H = m.cfg.n_layers, m.cfg.n_heads
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    pos, neg = pm.pair(seed, confound=True)
    with torch.inference_mode():
        _, clean = m.run_with_cache(pos, names_filter=names)
        _, corrupt = m.run_with_cache(neg, names_filter=names)
        base = _logit_diff(m(neg), c, o)[0]
    z = {}

    def grab(act, hook):  # a zero added to the activation: its gradient is the total derivative
        z[hook.name] = torch.zeros_like(act, requires_grad=True)
        return act + z[hook.name]

    with torch.enable_grad():
        metric = _logit_diff(m.run_with_hooks(neg, fwd_hooks=[(n, grab) for n in names]), c, o)[0]
        grads = torch.autograd.grad(metric, [z[n] for n in names])
    est = np.array(
        [float(((clean[n] - corrupt[n]) * g)[..., h, :].sum()) for n, g in zip(names, grads) for h in range(H)]
    )
    real = []
    for n in names:
        for h in range(H):

            def patch(act, hook, h=h):
                act[:, :, h] = clean[hook.name][:, :, h]
                return act

            with torch.inference_mode():
                real.append(float(_logit_diff(m.run_with_hooks(neg, fwd_hooks=[(n, patch)]), c, o)[0] - base))
    return est, np.array(real)


def test_validate_finds_the_single_planted_head(planted_results):
    from hooked_vivit import planted

    res, data = planted_results
    r = res["planted single_head"]["domains"]["single_head"]
    pm = planted.build("single_head", confound=True)
    pairs = r["pairs"]
    # Probe: before any layer (resid_pre 0) CLS is the same token in both clips of a pair (chance, ties
    # half); layer 0's mirror head and reacting neurons (distractors) already write the blob at CLS, so
    # resid_pre 1 decodes it - along their features, with nothing on signal_a yet - and so does every later layer.
    assert r["probes"]["cls"][0]["accuracy"] == 0.5
    assert [e["accuracy"] for e in r["probes"]["cls"][1:]] == [1.0] * (len(r["probes"]["cls"]) - 1)
    pos, neg = pm.pair(0, confound=True)
    with torch.inference_mode():
        _, cp = pm.model.run_with_cache(pos, names_filter="blocks.1.hook_resid_pre")
        _, cn = pm.model.run_with_cache(neg, names_filter="blocks.1.hook_resid_pre")
    delta = (cp["blocks.1.hook_resid_pre"] - cn["blocks.1.hook_resid_pre"])[0, 0].double()
    along = {f: float(delta @ planted.direction(f).double()) for f in ("signal_a", "mirror", "mirror_on")}
    assert along["signal_a"] == pytest.approx(0.0, abs=1e-6) and abs(along["mirror"]) > 0.1
    for v, e in r["recovery"]["variants"].items():
        assert e["top"] == "L1 attn", v
    # cls_projection of L1 attn recomputed by a raw-hook patch (the distractors at CLS keep it below 1).
    proj = r["recovery"]["variants"]["cls_projection"]
    by_hand = np.mean([_cls_projection_by_hand(pm, s, "blocks.1.hook_attn_out") for s in range(pairs)])
    assert proj["top_mean"] == pytest.approx(by_hand, abs=1e-4)
    # The headline (issue 30): the logit-difference recovery of every component and every head, each
    # recomputed by a raw-hook patch over the same pairs; the planted head's layer and the planted head
    # rank first (the cancelled head L2H1 and the cancelling neurons move it by a few %).
    assert r["recovery"]["headline"] == "logit_diff" and data["headline"]["planted single_head"] == "logit_diff"
    ld = r["recovery"]["variants"]["logit_diff"]
    hooks = [f"blocks.{l}.hook_{k}_out" for k in ("attn", "mlp") for l in range(pm.cfg.n_layers)]
    by_hand = [np.mean([_raw_patch_recovery(pm, s, h) for s in range(pairs)]) for h in hooks]
    assert ld["mean"] == pytest.approx(by_hand, abs=1e-4) and ld["top"] == "L1 attn"
    heads = r["recovery"]["heads"]
    by_hand = [
        np.mean([_raw_patch_recovery(pm, s, f"blocks.{l}.attn.hook_z", h) for s in range(pairs)])
        for l in range(pm.cfg.n_layers)
        for h in range(pm.cfg.n_heads)
    ]
    assert heads["mean"] == pytest.approx(by_hand, abs=1e-4) and heads["top"] == "L1H2"
    for s in r["recovery"]["sanity"].values():
        assert s["min"] == pytest.approx(1.0, abs=1e-5) and s["max"] == pytest.approx(1.0, abs=1e-5)
    d = r["maps"]["differential_dla"]
    assert d["share"]["mean"] == pytest.approx(1.0, abs=1e-6) and d["enrichment"]["mean"] == pytest.approx(
        8.0, abs=1e-4
    )  # 8 of 64 tokens
    # Against the tokens that differ between the clips (issue 30's matched null): validate's planted pairs
    # also show a confound box of the blob's size the decision ignores (planted.build(..., confound=True)),
    # so 8 of the 16 differing tokens are the blob (base rate 1/2) and the attribution, all on the blob,
    # is enriched exactly 2-fold over them; without the confound it could not exceed 1.
    assert r["maps"]["base_rate_differing"]["mean"] == 0.5
    assert d["enrichment_differing"]["mean"] == pytest.approx(2.0, abs=1e-6)
    # Every pair's enrichment exceeds 1: the one-sided exact signed-rank p over n pairs is 1 / 2^n.
    assert d["enrichment_differing_test"]["p"] == pytest.approx(1 / 2**pairs)
    # Zeroing the blob flips every positive clip to "no blob"; the negative clip has no blob to remove.
    assert r["ablation"]["to_twin"]["positive"]["mean"] == 1.0 and r["ablation"]["changed"]["negative"]["mean"] == 0.0
    # The confound box holds the other half of the pixel difference: matched control boxes exist in every
    # pair, and the blob's ablation moves the logit difference more than its matched boxes in every pair.
    ab = r["ablation"]
    assert ab["region_share"]["mean"] == pytest.approx(0.5, abs=1e-6) and ab["tested_pairs"] == pairs
    assert ab["test"]["p"] == pytest.approx(1 / 2**pairs) and ab["test"]["rank_biserial"] == 1.0
    # Attribution patching of z by head against real patching: both recomputed by hand (the gradient of
    # the logit difference on the negative run times the clean-minus-corrupt z; a raw-hook patch), pooled r.
    est, real = zip(*[_atp_and_real_by_head(pm, s) for s in range(r["attribution"]["pairs"])])
    r_by_hand = np.corrcoef(np.concatenate(est), np.concatenate(real))[0, 1]
    assert r["attribution"]["z by head"]["r"] == pytest.approx(r_by_hand, abs=1e-4)
    rows = {f["method"]: f["verdict"] for f in validation.findings(res["planted single_head"], data["settings"])}
    assert rows["component recovery (every variant)"] == "found by the headline (logit_diff); found in 6 of 6 variants"
    assert rows["per-head logit-difference recovery"] == "found"
    assert rows["whole-residual patch (sanity)"] == "passes"
    # The verdicts read the matched nulls after Holm over the report: with this few pairs the smallest
    # one-sided p (1/2^n) times the family can stay above 5 %, and the verdict says so rather than "found".
    for method, test in (
        ("differential DLA on the outcome region", d["enrichment_differing_test"]),
        ("outcome-region ablation (3 matched boxes per pair)", ab["test"]),
    ):
        want = "found" if test["p_holm"] < 0.05 else validation._missed(test)
        assert rows[method] == want, method
    # Probes: the layer x pooling choice is nested-cross-validated; raw pixels decode the blob (brightness)
    # as well as the model: a fingerprint, by the computed comparison.
    pr = r["probes"]
    assert pr["chosen"] == pr["nested"]["chosen_counts"][0]["configuration"] and pr["pixel_ceiling"]["fingerprint"]
    assert pr["random_weights"]["configuration"] == pr["chosen"]
    assert rows["outcome probe (held-out by pair)"].startswith("found") and rows[
        "outcome probe (held-out by pair)"
    ].endswith("decodable from pixels alone: a fingerprint")


def test_validate_reports_what_misses_the_composition(planted_results):
    res, data = planted_results
    r = res["planted and_composition"]["domains"]["and_composition"]
    assert (
        r["maps"]["dla_zero_pairs"] == 6 and "differential_dla" not in r["maps"]
    )  # no head writes the class direction
    assert r["attribution"]["mlp_out by layer"]["r"] == pytest.approx(1.0, abs=1e-3)
    assert np.isnan(r["attribution"]["z by head"]["r"])  # AtP gives every head exactly 0 at the silent neuron
    # The headline (issue 30): the logit-difference recovery ranks the composing MLP first at 1 and gives every
    # attention block and every head 0; cls_projection, beside it, ranks the MLP below the heads' layers.
    rec = r["recovery"]
    assert rec["headline"] == "logit_diff" and data["headline"]["planted and_composition"] == "logit_diff"
    ld = rec["variants"]["logit_diff"]
    assert ld["top"] == "L2 mlp" and ld["top_mean"] == pytest.approx(1.0, abs=1e-5)
    assert ld["top_ci95"][0] == pytest.approx(1.0, abs=1e-5)  # on every pair
    assert max(abs(m) for c, m in zip(rec["components"], ld["mean"]) if c != "L2 mlp") < 1e-5
    assert rec["heads"]["max_abs_mean"] < 1e-5 and len(rec["heads"]["labels"]) == 12
    proj = rec["variants"]["cls_projection"]
    assert proj["top"] == "L1 attn" and proj["mean"][rec["components"].index("L2 mlp")] < proj["top_mean"]
    assert rec["sanity"]["logit_diff"]["min"] == pytest.approx(1.0, abs=1e-5)
    rows = {f["method"]: f["verdict"] for f in validation.findings(res["planted and_composition"], data["settings"])}
    assert rows["component recovery (every variant)"] == "found by the headline (logit_diff); found in 1 of 6 variants"
    assert rows["per-head logit-difference recovery"] == "found"
    found = {f["method"]: f["found"] for f in validation.findings(res["planted and_composition"], data["settings"])}
    assert found["per-head logit-difference recovery"].startswith("every head ~ 0 (largest |mean| 0.0%)")
    assert rows["differential DLA on the outcome region"] == "missed (blind to an MLP-composed signal)"
    table = validation.validation_markdown(data)
    assert "| planted and_composition | and_composition | differential DLA on the outcome region |" in table


def test_validate_reads_each_planted_mechanism_from_its_truth(planted_results):
    """Expectations follow the truth's kind of mechanism, not "has an MLP": redundant (two heads into one
    saturating readout) is found when each planted head - and each of their layers and the MLP - restores
    the decision alone (each recomputed by a raw-hook patch); temporal and spread by their one head."""
    from hooked_vivit import planted

    res, data = planted_results
    kinds = {n: validation._mechanism(res[f"planted {n}"]["truth"]) for n in planted.NAMES if n != "null"}
    assert kinds == {
        "single_head": "head",
        "and_composition": "composition",
        "temporal": "head",
        "spread": "head",
        "redundant": "redundant",
    }
    pm = planted.build("redundant", confound=True)
    r = res["planted redundant"]["domains"]["redundant"]
    n = r["pairs"]
    heads = r["recovery"]["heads"]
    for label in pm.truth.head_labels:
        l, h = (int(x) for x in label[1:].split("H"))
        by_hand = np.mean([_raw_patch_recovery(pm, s, f"blocks.{l}.attn.hook_z", h) for s in range(n)])
        assert heads["mean"][heads["labels"].index(label)] == pytest.approx(by_hand, abs=1e-4)
        assert by_hand > 0.5, label  # alone, either head's z restores (more than) the whole decision
    ld = r["recovery"]["variants"]["logit_diff"]
    for component, hook in (("L0 attn", "blocks.0.hook_attn_out"), ("L1 attn", "blocks.1.hook_attn_out")):
        by_hand = np.mean([_raw_patch_recovery(pm, s, hook) for s in range(n)])
        assert ld["mean"][r["recovery"]["components"].index(component)] == pytest.approx(by_hand, abs=1e-4)
    rows = {f["method"]: f for f in validation.findings(res["planted redundant"], data["settings"])}
    assert rows["per-head logit-difference recovery"]["verdict"] == "found"
    assert rows["per-head logit-difference recovery"]["expected"].startswith("each of L0H1 and L1H2 alone restores")
    assert rows["component recovery (every variant)"]["verdict"].startswith("found by the headline (logit_diff)")
    for name in ("temporal", "spread"):
        rows = {f["method"]: f["verdict"] for f in validation.findings(res[f"planted {name}"], data["settings"])}
        assert rows["per-head logit-difference recovery"] == "found", name
        assert rows["component recovery (every variant)"].startswith("found by the headline (logit_diff)"), name


def _component_atp_and_real(pm, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """attn_out then mlp_out by layer: the attribution-patching estimate of the logit difference's change
    (gradient on the negative run . (clean - corrupt), every position) and the real change by a raw-hook patch."""
    m, c, o = pm.model, pm.truth.positive, pm.truth.negative
    names = [f"blocks.{l}.hook_{k}_out" for k in ("attn", "mlp") for l in range(m.cfg.n_layers)]
    pos, neg = pm.pair(seed, confound=True)
    with torch.inference_mode():
        _, clean = m.run_with_cache(pos, names_filter=names)
        _, corrupt = m.run_with_cache(neg, names_filter=names)
        base = _logit_diff(m(neg), c, o)[0]
    acts = {}

    def grab(act, hook):  # a zero added to the activation: its gradient is the total derivative
        acts[hook.name] = torch.zeros_like(act, requires_grad=True)
        return act + acts[hook.name]

    with torch.enable_grad():
        metric = _logit_diff(m.run_with_hooks(neg, fwd_hooks=[(n, grab) for n in names]), c, o)[0]
        grads = torch.autograd.grad(metric, [acts[n] for n in names])
    est = np.array([float(((clean[n] - corrupt[n]) * g).sum()) for n, g in zip(names, grads)])
    real = []
    for n in names:
        with torch.inference_mode():
            patched = m.run_with_hooks(neg, fwd_hooks=[(n, lambda a, hook: clean[hook.name])])
        real.append(float(_logit_diff(patched, c, o)[0] - base))
    return est, np.array(real)


def test_validate_on_the_null_reports_no_finding_and_each_methods_false_positive_rate(planted_results):
    """The null (issue 31): 100 pairs whatever the others get; per method its per-pair rule's false-positive
    rate with statsmodels' Clopper-Pearson interval; no row reports "found". The rates that matter are
    recomputed by hand: the pair's two logit differences are equal to rounding (logit_diff undefined: no
    finding), L1H2's layer restores most of the CLS difference (cls_projection: the representation does
    differ), and attribution patching's estimates exceed 0.1 logits while every real patch moves nothing."""
    from statsmodels.stats.proportion import proportion_confint

    from hooked_vivit import planted
    from hooked_vivit.analysis import ladder

    res, data = planted_results
    sub = res["planted null"]
    r = sub["domains"]["null"]
    assert data["settings"]["null_pairs"] == 100 and r["pairs"] == 100
    assert res["planted single_head"]["domains"]["single_head"]["pairs"] == data["settings"]["pairs_per_domain"] == 6
    fp = r["false_positive"]
    assert set(fp) == set(validation.NULL_RULES)
    for m, e in fp.items():
        d = e["decisions"]
        k, n = sum(x is True for x in d), sum(x is not None for x in d)
        assert len(d) == 100 and (e["false_positive_pairs"], e["pairs"], e["undecided"]) == (k, n, 100 - n), m
        if n:
            assert e["false_positive_rate"] == k / n
            assert e["false_positive_ci95"] == pytest.approx(list(proportion_confint(k, n, alpha=0.05, method="beta")))
    pm = planted.build("null", confound=True)
    c, o = pm.truth.positive, pm.truth.negative
    for seed in range(100):  # LogitDiffRecovery's rule: equal to within 1e-5 of the largest |logit|
        pos, neg = pm.pair(seed, confound=True)
        with torch.inference_mode():
            lp, ln = pm.model(pos).double(), pm.model(neg).double()
        gap = abs(float(_logit_diff(lp, c, o)[0] - _logit_diff(ln, c, o)[0]))
        assert gap <= 1e-5 * float(torch.cat([lp, ln]).abs().max()), seed
    assert "logit_diff" not in r["recovery"]["variants"] and r["recovery"]["sanity_undefined"]["pairs"] == 2
    assert [(fp[m]["false_positive_pairs"], fp[m]["pairs"]) for m in ("recovery", "heads")] == [(0, 100)] * 2
    l1 = r["recovery"]["components"].index("L1 attn")
    for seed in range(3):
        by_hand = _cls_projection_by_hand(pm, seed, "blocks.1.hook_attn_out")
        assert r["recovery"]["per_pair"]["cls_projection"][seed][l1] == pytest.approx(by_hand, abs=1e-4)
        assert by_hand > ladder.RECOVERY_THRESHOLD
        est, real = _component_atp_and_real(pm, seed)
        assert r["attribution"]["per_pair"][seed]["estimates"] == pytest.approx(list(est), abs=1e-4)
        assert r["attribution"]["per_pair"][seed]["real"] == pytest.approx(list(real), abs=1e-4)
        # AtP's largest estimate is L1 attn (L1H2 gathers the blob the classifier ignores; the final
        # LayerNorm's linearisation): its real patch moves the logit difference the other way; the largest
        # real effect is layer 2's MLP (the cancelling neurons patched without the head they cancel).
        labels = [f"L{l} {k}" for k in ("attn", "mlp") for l in range(pm.cfg.n_layers)]
        top_est, top_real = int(np.abs(est).argmax()), int(np.abs(real).argmax())
        assert (labels[top_est], labels[top_real]) == ("L1 attn", "L2 mlp")
        assert np.sign(est[top_est]) == -np.sign(real[top_est]) != 0
    assert (fp["cls_projection"]["false_positive_pairs"], fp["attribution"]["false_positive_pairs"]) == (100, 100)
    assert fp["cls_projection"]["false_positive_ci95"] == pytest.approx(
        list(proportion_confint(100, 100, alpha=0.05, method="beta"))
    )
    rows = validation.findings(sub, data["settings"])
    assert rows and not any("found" in f["verdict"] for f in rows)
    by_row = {f["method"]: f for f in rows}
    for e in fp.values():
        want = (
            "untestable: the rule decides no pair"
            if not e["pairs"]
            else "false positive"
            if e["false_positive_pairs"]
            else "correct negative"
        )
        assert by_row[e["row"]]["verdict"] == want
        assert f"answers: {validation.QUESTIONS[e['question']]}" in by_row[e["row"]]["found"]
    assert by_row["component recovery (logit_diff, the headline)"]["verdict"] == "correct negative"
    assert by_row["attribution patching (AtP)"]["verdict"] == "false positive"
    assert by_row["whole-residual patch (sanity)"]["verdict"] == "passes"
    assert "| planted null | null | component recovery (cls_projection) |" in validation.validation_markdown(data)


def test_validate_on_the_organisms_tiny(outcomes):
    data = validation.validate(
        ("actions", "outcomes"),
        (),
        n_pairs=5,
        domains=("golf",),
        sanity_pairs=1,
        attribution_pairs=1,
        n_controls=2,
        progress=False,
        models={"outcomes": outcomes},
    )
    res = {r["subject"]: r for r in data["subjects"]}
    assert not res["actions organism"]["outcome_is_label"] and res["outcomes organism"]["outcome_is_label"]
    assert "attribution" not in res["actions organism"]["domains"]["golf"]
    # The headline: logit_diff where the outcome is a label (the outcomes organism), else cls_projection.
    assert data["headline"] == {"actions organism": "cls_projection", "outcomes organism": "logit_diff"}
    assert "logit_diff" not in res["actions organism"]["domains"]["golf"]["recovery"]["variants"]
    assert "remains answerable" in res["actions organism"]["domains"]["golf"]["recovery"]["headline_reason"]
    assert len(res["outcomes organism"]["domains"]["golf"]["recovery"]["heads"]["mean"]) == 24  # 6 layers x 4 heads
    gt = res["outcomes organism"]["domains"]["golf"]
    for s in gt["recovery"]["sanity"].values():
        assert s["min"] == pytest.approx(1.0, abs=1e-4) and s["max"] == pytest.approx(1.0, abs=1e-4)
    pairs = validation.organism_pairs(outcomes, "golf", 5)
    with torch.inference_mode():
        pred = [int(outcomes(x).argmax()) for p in pairs for x in (p.positive, p.negative)]
    assert pred.count(2) + pred.count(3) >= 9  # golf clips are called golf (in or miss): 98 % of the card's test clips
    assert gt["attribution"]["pairs"] == 1 and gt["attribution"]["metric"].startswith("logit difference")


def test_validate_command_writes_the_table(tmp_path):
    from hooked_vivit.cli import main

    out = tmp_path / "val"
    assert (
        main(
            [
                "validate",
                "--model",
                "--planted",
                "single_head",
                "--pairs",
                "5",
                "--sanity-pairs",
                "1",
                "--attribution-pairs",
                "1",
                "--controls",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    data = json.loads((out / "validation.json").read_text())
    assert [s["subject"] for s in data["subjects"]] == ["planted single_head"]
    assert (out / "validation.md").read_text().count("| planted single_head |") == 8  # with the per-head row
    with pytest.raises(SystemExit) as e:  # refused while parsing, before anything loads
        main(["validate", "--model", "bowling", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:  # the null's false-positive rates need at least 100 pairs
        main(["validate", "--model", "--planted", "null", "--null-pairs", "99", "--out", str(tmp_path / "y")])
    assert e.value.code == 2 and not (tmp_path / "y").exists()


def test_the_model_cards_stage_command_gives_back_the_stages_config():
    """The card's command line for a stage, parsed by train's own argument parser, is the stage's TrainConfig."""
    import dataclasses
    import shlex

    from hooked_vivit.organism.evaluate import _stage_command
    from hooked_vivit.organism.train import TASK_DEFAULTS, config_from_args

    def recorded(tc):  # as train() writes train_config into metrics.json
        return json.loads(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in tc.__dict__.items()}))

    variants = [
        {},
        {"actions": ("shooting basketball",), "schedule": "constant", "warmup_steps": 50, "train_per_class": 150},
        {
            "init_from": "STAGE1",
            "fresh_data": False,
            "paired_batches": False,
            "data_offset": 12,
            "token_supervision": (),
        },
        {"repeat": {"shooting basketball": 4, "bowling": 2}, "tubelet": (2, 8, 8), "d_model": 64, "d_mlp": 256},
        {"seed": 3, "lr": 2e-4, "pos_init": "normal", "cls_init_std": 0.0, "token_supervision_weight": 0.25},
    ]
    for task in ("outcomes", "actions"):
        for change in variants:
            tc = TrainConfig(**TASK_DEFAULTS[task])
            tc.task = task
            for field, value in change.items():
                setattr(tc, field, value)
            command = _stage_command(recorded(tc), 1)
            words = shlex.split(command)
            assert words[:5] == ["python", "-m", "hooked_vivit.organism.train", "--out", "DIR"]
            parsed, _ = config_from_args(words[3:])
            assert dataclasses.asdict(parsed) == dataclasses.asdict(tc), command
    # Fields without an option are named after the command.
    smoke = TrainConfig.smoke()  # d_mlp 64 is not 4 x d_model 32: --d-model cannot say it
    assert _stage_command(recorded(smoke), 1).endswith("(TrainConfig: num_frames=8, size=32, d_mlp=64)")
    smoke.d_mlp = 4 * smoke.d_model
    assert _stage_command(recorded(smoke), 1).endswith("(TrainConfig: num_frames=8, size=32)")


def test_the_larger_held_out_test_counts_what_a_loop_counts(outcomes):
    """evaluate.held_out_accuracy (rendered in chunks) against a plain loop over the same fresh clips; its
    intervals are Wilson's; its seeds are recorded as used and lie past the card's test set and this file's."""
    from hooked_vivit.organism.data import HELD_OUT_OFFSET, used_seed_ranges
    from hooked_vivit.organism.evaluate import held_out_accuracy, wilson_interval

    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook 8 / 10 interval
    classes = organism.task_classes("outcomes")
    result = held_out_accuracy(outcomes, classes, per_class=3, chunk=2)
    clips, labels, _ = render_split("test", 3, 16, 96, classes, offset=HELD_OUT_OFFSET)
    with torch.inference_mode():
        pred = torch.cat([outcomes(to_pixels(clips[i : i + 9])).argmax(-1) for i in range(0, len(clips), 9)]).numpy()
    for c, name in enumerate(OUTCOME_LABELS):
        hits = int((pred[labels == c] == c).sum())
        assert result["per_class"][name]["clips"] == 3
        assert result["per_class"][name]["accuracy"] == hits / 3
        assert result["per_class"][name]["ci95"] == list(wilson_interval(hits, 3))
    assert result["overall"]["accuracy"] == float((pred == labels).mean())
    action = np.array([a for _, a, _ in classes])
    assert result["action"]["accuracy"] == float((action[pred] == action[labels]).mean())
    assert (result["first_seed"], result["last_seed"]) == (2_001_000, 2_001_002)
    ranges = used_seed_ranges({"train_config": TrainConfig().__dict__ | {"fresh_data": False}}, None, result)
    assert ranges[-1] == {"use": "held-out test (evaluate.py)", "first": 2_001_000, "last": 2_001_002}
    shipped = recorded_seed_ranges(organism.checkpoint_path("outcomes"))["used"]
    assert seed_use(2_001_499, shipped) == "held-out test (evaluate.py)" and seed_use(2_001_500, shipped) is None
    with pytest.raises(ValueError, match="the model's classes"):
        held_out_accuracy(outcomes, organism.task_classes("actions"), per_class=1)


def test_a_stages_loss_reads_only_its_classes_columns():
    """stage_loss against F.cross_entropy written out: the CLS part over the trained columns, the token part
    averaged over heads with every token labelled; logits of untrained classes change nothing."""
    import torch.nn.functional as F

    from hooked_vivit.organism.train import stage_loss

    gen = torch.Generator().manual_seed(0)
    logits, y, columns = torch.randn(6, 9, generator=gen), torch.tensor([0, 1, 1, 0, 1, 0]), torch.tensor([4, 5])
    tokens = [torch.randn(6, 7, 9, generator=gen) for _ in range(2)]
    loss, cls_part, token_part = stage_loss(logits, tokens, y, columns, 0.5)
    assert torch.allclose(cls_part, F.cross_entropy(logits[:, [4, 5]], y))
    by_hand = sum(F.cross_entropy(t[:, :, [4, 5]].reshape(42, 2), y.repeat_interleave(7)) for t in tokens) / 2
    assert torch.allclose(token_part, by_hand) and torch.allclose(loss, cls_part + 0.5 * by_hand)
    others = [c for c in range(9) if c not in (4, 5)]
    moved = logits.clone()
    moved[:, others] += 100.0
    moved_tokens = [t.clone() for t in tokens]
    for t in moved_tokens:
        t[..., others] -= 100.0
    assert torch.equal(stage_loss(moved, moved_tokens, y, columns, 0.5)[0], loss)
    assert stage_loss(logits, [], y, columns, 0.5)[2] is None


def test_a_stage_from_a_checkpoint_checks_it_before_rendering(tmp_path, monkeypatch):
    from hooked_vivit.organism import train as train_module

    tc = TrainConfig.smoke()
    train(tc, tmp_path / "stage1", progress=False)
    monkeypatch.setattr(train_module, "render_split", lambda *a, **k: pytest.fail("rendered before the checks"))
    later = TrainConfig.smoke()
    later.init_from, later.token_supervision = str(tmp_path / "stage1"), (2,)  # the checkpoint has 2 layers
    with pytest.raises(ValueError, match=r"token_supervision layers must be in 0\.\.1"):
        train_module.train(later, tmp_path / "bad", progress=False)
    other_task = TrainConfig.smoke()
    other_task.init_from, other_task.task = str(tmp_path / "stage1"), "outcomes"
    with pytest.raises(ValueError, match="has classes"):
        train_module.train(other_task, tmp_path / "bad", progress=False)
