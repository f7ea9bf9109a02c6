"""Issue 17: never lose a user's file, never patch silently wrong, and a clear error for each bad input.
One section per item of the issue; every test here failed on the code before the fix."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hooked_vivit import HookedViViT, HookNameError, synthetic
from hooked_vivit.analysis import pipeline
from hooked_vivit.causal import ablation
from hooked_vivit.causal.attribution import attribution_patch
from hooked_vivit.causal.metrics import ClassLogit
from hooked_vivit.causal.patching import FrameSlot, Patch, Region, resolve_positions, run_patches, token_patches
from hooked_vivit.cli import main
from hooked_vivit.model import HookReturnError
from hooked_vivit.output_dir import MANIFEST, OutputDir, OutputDirError, output_directory, record_written
from hooked_vivit.parity import ParityReport, ParityRow
from hooked_vivit.video import load_video, preprocess, write_video
from tests.conftest import make_hf
from weights_conversion import CheckpointError

REPO = Path(__file__).resolve().parents[1]
SQUARE = dict(
    image_size=32,
    num_frames=8,
    tubelet_size=[2, 8, 8],
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=6,
)


@pytest.fixture(scope="module")
def model():
    return HookedViViT.from_hf_model(make_hf(SQUARE, seed=3))


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture()
def x(model):
    return torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def render(out, *extra) -> int:
    return main(["render", "--domain", "bowling", "--frames", "8", "--size", "32", "--out", str(out), *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ============================================================================ 1. --overwrite never loses a file
def test_overwrite_refuses_foreign_files_and_names_them(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (work / "sub").mkdir()
    (work / "sub" / "data.csv").write_text("1,2")
    for cmd in (["analyze", "--quiet"], ["study", "--quiet"]):
        assert main([*cmd, "--out", str(work), "--overwrite"]) == 2
        err = one_line_error(capsys)
        assert "notes.txt, sub/)" in err and "did not write" in err
    assert render(work, "--overwrite") == 2
    one_line_error(capsys)
    assert (work / "notes.txt").read_text() == "mine" and (work / "sub" / "data.csv").read_text() == "1,2"
    # --out . (the working directory) is refused even when it is empty.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert render(".", "--overwrite") == 2
    assert "current directory" in one_line_error(capsys)
    assert empty.is_dir() and not any(empty.iterdir())


def test_overwrite_never_touches_the_inputs(tmp_path, capsys, saved_model):
    pair = tmp_path / "pair"
    assert render(pair) == 0
    clips = {p.name: p.read_bytes() for p in pair.iterdir()}
    assert json.loads((pair / MANIFEST).read_text())["files"] == [
        "frames.png",
        "meta.json",
        "negative.mp4",
        "positive.mp4",
    ]
    assert (
        main(
            [
                "analyze",
                "--model",
                str(saved_model),
                "--clean",
                str(pair / "positive.mp4"),
                "--corrupted",
                str(pair / "negative.mp4"),
                "--out",
                str(pair),
                "--overwrite",
                "--quiet",
            ]
        )
        == 2
    )
    assert "holds the input" in one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in pair.iterdir()} == clips
    # The model's checkpoint directory is an input too.
    assert main(["analyze", "--model", str(saved_model), "--out", str(saved_model), "--overwrite", "--quiet"]) == 2
    assert "holds the input" in one_line_error(capsys) and (saved_model / "model.safetensors").exists()


def test_overwrite_replaces_only_an_earlier_output(tmp_path, capsys, model):
    out = tmp_path / "pair"
    assert render(out) == 0
    assert render(out) == 2 and "--overwrite" in one_line_error(capsys)
    first = (out / "positive.mp4").stat().st_ino
    assert main(["render", "--domain", "golf", "--frames", "8", "--size", "32", "--out", str(out), "--overwrite"]) == 0
    assert (
        json.loads((out / "meta.json").read_text())["domain"] == "golf putting"
        and (out / "positive.mp4").stat().st_ino != first
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair"]  # no lock, no partial or old directory left
    # save_pretrained: the same rules.
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    model.save_pretrained(ckpt, overwrite=True)
    (ckpt / "README.md").write_text("my notes")
    with pytest.raises(OutputDirError, match="README.md"):
        model.save_pretrained(ckpt, overwrite=True)
    assert (ckpt / "README.md").read_text() == "my notes" and (ckpt / "model.safetensors").exists()
    # Files the library adds to its own output later (the organism's metrics.json) join the manifest.
    (ckpt / "README.md").unlink()
    (ckpt / "metrics.json").write_text("{}")
    record_written(ckpt, "metrics.json")
    model.save_pretrained(ckpt, overwrite=True)
    assert sorted(p.name for p in ckpt.iterdir()) == [MANIFEST, "config.json", "model.safetensors"]


# ============================================================================ 2. concurrent runs
def test_a_second_run_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded although --out was refused")

    monkeypatch.setattr(pipeline, "load_model", must_not_load)
    with OutputDir(out, writer="test") as first:
        assert render(out) == 2  # a concurrent run into the same new directory
        assert f"pid {os.getpid()}" in one_line_error(capsys)
        assert main(["analyze", "--out", str(out), "--quiet"]) == 2
        one_line_error(capsys)
        with first.writing() as tmp:
            (tmp / "result.txt").write_text("first")
    assert (out / "result.txt").read_text() == "first"
    assert main(["analyze", "--out", str(out), "--quiet"]) == 2  # exists: refused before loading the model
    assert "earlier output" in one_line_error(capsys)


def test_the_final_rename_fails_if_the_target_appeared(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputDirError, match="appeared"):
        with output_directory(out) as tmp:
            (tmp / "mine.txt").write_text("lost?")
            out.mkdir()  # another writer (not using the lock) got there first
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and (out / "theirs.txt").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ============================================================================ 3. symlinks, SIGTERM, modes
def test_symlinked_out_is_followed(tmp_path, model):
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)  # dangling until the first save
    model.save_pretrained(link)
    model.save_pretrained(link, overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert sorted(p.name for p in real.iterdir()) == [MANIFEST, "config.json", "model.safetensors"]
    assert torch.equal(HookedViViT.from_pretrained(link).W_E, model.W_E)


def test_sigterm_leaves_nothing_behind(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from hooked_vivit.output_dir import output_directory
        with output_directory({str(tmp_path / "out")!r}) as tmp:
            (tmp / "half.txt").write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
            import time; time.sleep(30)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert list(tmp_path.iterdir()) == []  # no .out.*.partial, no lock


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert render(tmp_path / "pair") == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pair").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "pair" / "positive.mp4").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "pair" / "meta.json").stat().st_mode) == 0o640


# ============================================================================ 4. hooks that cannot fire
DEAD = [
    "blocks.1.attn.hook_result",
    "blocks.0.hook_q_input",
    "blocks.0.hook_k_input",
    "blocks.0.hook_v_input",
    "blocks.1.hook_attn_in",
    "blocks.0.hook_mlp_in",
]


@pytest.mark.parametrize("name", DEAD)
def test_hooks_that_cannot_fire_raise_naming_the_switch(model, x, name):
    switch = {"hook_result": "use_attn_result", "hook_attn_in": "use_attn_in", "hook_mlp_in": "use_hook_mlp_in"}.get(
        name.rsplit(".", 1)[-1], "use_split_qkv_input"
    )
    zero = lambda a, hook: a.zero_()  # noqa: E731
    calls = [
        lambda: model.run_with_hooks(x, fwd_hooks=[(name, zero)]),
        lambda: model.run_with_cache(x, names_filter=[name]),
        lambda: model.run_with_cache(x, names_filter=name),
        lambda: model.run_with_cache(x, names_filter=lambda n: n == name),
        lambda: model.add_hook(name, zero),
        lambda: ablation.ablate(model, x, name),
        lambda: run_patches(model, [Patch(name)], source_cache={}, target=x, metric=ClassLogit(0)),
    ]
    for call in calls:
        with pytest.raises(HookNameError, match=switch):
            call()
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_caching_everything_skips_hooks_that_cannot_fire_and_switches_work(model, x):
    _, cache = model.run_with_cache(x)
    assert len(cache.cache_dict) == len(model.hook_dict) - 6 * model.cfg.n_layers
    model.cfg.use_attn_result = True
    try:
        # Now hook_result fires: zeroing every head's result leaves attn_out = b_O, exactly.
        zeroed = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_result", lambda a, hook: torch.zeros_like(a))])
        b_O = model.blocks[1].attn.b_O
        expected = model.run_with_hooks(
            x, fwd_hooks=[("blocks.1.hook_attn_out", lambda a, hook: b_O.expand_as(a).clone())]
        )
        torch.testing.assert_close(zeroed, expected, rtol=0, atol=1e-6)
        assert not torch.allclose(zeroed, model(x))
    finally:
        model.cfg.use_attn_result = False


# ============================================================================ 5. position groups
def test_position_groups_empty_out_of_range_masks_floats_negatives(model):
    grid = model.cfg.grid  # 4 frame slots x 4 x 4
    for bad, match in [
        (Region(frame_slots=[]), "selects no token"),
        (Region(rows=slice(10, 20)), "out of range"),
        (Region(rows=slice(2, 20)), "out of range"),
        ([], "selects no token"),
        ([2.5], "integer"),
        (torch.tensor([1.0]), "integer"),
        ([-5], "negative"),
        (FrameSlot(-1), "negative"),
        (Region(cols=[1.0]), "integer"),
    ]:
        with pytest.raises(ValueError, match=match):
            resolve_positions(model, bad)
    mask = torch.zeros(model.cfg.n_ctx, dtype=torch.bool)
    mask[[0, 2]] = True
    assert resolve_positions(model, mask) == (0, 2)  # a mask, not indices 0/1
    grid_mask = torch.zeros(grid.shape, dtype=torch.bool)
    grid_mask[1, 2, 3] = True
    assert resolve_positions(model, grid_mask) == (grid.index(1, 2, 3),)
    assert resolve_positions(model, Region(frame_slots=0, rows=slice(0, 2), cols=[1])) == (
        grid.index(0, 0, 1),
        grid.index(0, 1, 1),
    )
    with pytest.raises(ValueError, match="negative"):
        token_patches(model, positions=[-5])
    for patch in (
        Patch("blocks.0.hook_resid_pre", (-5,), label="pos-5"),
        Patch("blocks.0.attn.hook_z", None, head=-1),
        Patch("blocks.0.hook_resid_pre", ()),
    ):
        with pytest.raises(ValueError, match="negative|empty"):
            run_patches(model, [patch], source_cache={}, target=torch.zeros(1, 8, 3, 32, 32), metric=ClassLogit(0))


# ============================================================================ 6. hook return values
def test_hook_returns_of_another_shape_dtype_or_type_raise(model, x):
    name = "blocks.0.hook_resid_pre"
    for bad in (
        lambda a, hook: a[:, :10],
        lambda a, hook: a[:, :1],
        lambda a, hook: a.sum(),
        lambda a, hook: a.double(),
        lambda a, hook: a.tolist(),
    ):
        with pytest.raises(HookReturnError, match=r"'blocks.0.hook_resid_pre'.*\(2, 65, 32\)"):
            model.run_with_hooks(x, fwd_hooks=[(name, bad)])
        with pytest.raises(HookReturnError):
            model.run_with_hooks(x, fwd_hooks=[(lambda n: n == name, bad)])
    model.add_hook(name, lambda a, hook: a[:, :1])
    try:
        with pytest.raises(HookReturnError, match=r"\(2, 1, 32\)"):
            model(x)
    finally:
        model.reset_hooks()
    # A hook returning a new tensor of the right shape is fine and means what it says.
    replaced = model.run_with_hooks(x, fwd_hooks=[(name, lambda a, hook: torch.zeros_like(a))])
    in_place = model.run_with_hooks(x, fwd_hooks=[(name, lambda a, hook: a.zero_())])
    torch.testing.assert_close(replaced, in_place, rtol=0, atol=0)


# ============================================================================ 7. odd frame sizes
def test_write_video_refuses_odd_sizes_and_render_refuses_odd_size(tmp_path, capsys):
    frames = np.random.default_rng(0).integers(0, 255, (4, 33, 47, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="47x33.*even"):
        write_video(frames, tmp_path / "odd.mp4")
    assert not list(tmp_path.iterdir())
    write_video(frames[:, :32, :46], tmp_path / "even.mp4")
    assert load_video(tmp_path / "even.mp4", 4).shape == (4, 32, 46, 3)
    with pytest.raises(SystemExit) as e:
        main(["render", "--domain", "bowling", "--size", "97", "--out", str(tmp_path / "p97")])
    assert e.value.code == 2 and "--size" in one_line_error(capsys) and not (tmp_path / "p97").exists()


# ============================================================================ 8. analyze inputs
def test_analyze_keys_predictions_by_role(tmp_path, saved_model):
    pos, neg, _ = synthetic.render_pair("golf", 3, num_frames=8, size=48)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_video(pos, tmp_path / "a" / "clip.mp4")
    write_video(neg, tmp_path / "b" / "clip.mp4")
    out = tmp_path / "report"
    assert (
        main(
            [
                "analyze",
                "--model",
                str(saved_model),
                "--clean",
                str(tmp_path / "a" / "clip.mp4"),
                "--corrupted",
                str(tmp_path / "b" / "clip.mp4"),
                "--probe-pairs",
                "0",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    pred = json.loads((out / "results.json").read_text())["prediction"]
    assert set(pred) == {"positive", "negative"} and pred["positive"]["clip"] != pred["negative"]["clip"]
    model = HookedViViT.from_pretrained(saved_model)
    logits = model(torch.cat([pipeline.model_pixels(model, load_video(tmp_path / d / "clip.mp4", 8)) for d in "ab"]))
    assert [pred[r]["class"] for r in ("positive", "negative")] == logits.argmax(-1).tolist()
    # Clips of two sizes are analysed with a warning: tests/test_real_clips.py (issue 32, item 10).


# ============================================================================ 9. CLI errors: one line, exit 2
def test_cli_errors_are_one_line_naming_the_flag_or_file(tmp_path, capsys):
    cases = [
        (["info", "--model", "x", "--device", "banana"], "--device"),
        (["render", "--domain", "golf", "--size", "100000", "--out", str(tmp_path / "r")], "--size"),
        (["analyze", "--probe-pairs", "-5", "--out", str(tmp_path / "a")], "--probe-pairs"),
        (["analyze", "--probe-pairs", "1", "--out", str(tmp_path / "a")], "--probe-pairs"),
        (["study", "--pairs", "0", "--out", str(tmp_path / "s")], "--pairs"),
        (["parity", "--tol", "nan"], "--tol"),
        (["render", "--domain", "golf", "--fps", "0", "--out", str(tmp_path / "r")], "--fps"),
    ]
    if not torch.cuda.is_available():
        cases.append((["info", "--model", "x", "--device", "cuda"], "CUDA is not available"))
    for argv, named in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert named in one_line_error(capsys)
    bad = tmp_path / "listcfg"
    bad.mkdir()
    (bad / "config.json").write_text("[1, 2]")
    assert main(["info", "--model", str(bad)]) == 2
    assert "config.json" in one_line_error(capsys)
    backbone = tmp_path / "backbone"
    make_hf(SQUARE, backbone=True).save_pretrained(backbone)
    capsys.readouterr()
    assert (
        main(["analyze", "--model", str(backbone), "--probe-pairs", "0", "--out", str(tmp_path / "bb"), "--quiet"]) == 2
    )
    assert "backbone" in one_line_error(capsys) and not (tmp_path / "bb").exists()


# ============================================================================ 10. errors that name what was expected
def test_video_and_preprocessing_errors(tmp_path, monkeypatch):
    frames = np.zeros((10, 32, 32, 3), dtype=np.uint8)
    write_video(frames, tmp_path / "ten.mp4")
    with pytest.raises(ValueError, match="start_index 50 is past the end of this 10-frame clip"):
        load_video(tmp_path / "ten.mp4", 4, sampling="strided", start_index=50)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_video("~/ten.mp4", 4).shape == (4, 32, 32, 3)
    for kwargs, match in [(dict(pad="zeros"), "pad must be"), (dict(sampling="random"), "sampling must be")]:
        with pytest.raises(ValueError, match=match):
            load_video(tmp_path / "ten.mp4", 4, **kwargs)
    with pytest.raises(ValueError, match="num_frames must be an integer >= 1, got 8.0"):
        load_video(tmp_path / "ten.mp4", 8.0)
    for crop in (-5, 0, (32, 0)):
        with pytest.raises(ValueError, match="crop_size must be a positive integer"):
            preprocess(frames, crop_size=crop)
    for fps in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="fps must be a finite number > 0"):
            write_video(frames, tmp_path / "f.mp4", fps=fps)


def test_model_cache_and_metric_errors(model, x):
    with pytest.raises(ValueError, match="batch size 0"):
        model(x[:0])
    _, cache = model.run_with_cache(x, names_filter=lambda n: "resid" in n)
    with pytest.raises(KeyError, match="Layer 9 does not exist"):
        cache["resid_pre", 9]
    with pytest.raises(KeyError, match="blocks.0.hook_resid_pre"):
        cache["resid_pr", 0]
    with pytest.raises(KeyError, match="was not cached"):
        cache["pattern", 0]
    with pytest.raises(ValueError, match="labels=model"):
        ClassLogit("LABEL_3")
    logits = model(x)
    torch.testing.assert_close(ClassLogit("LABEL_3", labels=model)(logits), logits[:, 3])
    torch.testing.assert_close(ClassLogit(["LABEL_1", 4], labels=model.cfg.id2label)(logits), logits[[0, 1], [1, 4]])
    with pytest.raises(ValueError, match="one value per batch row"):
        attribution_patch(model, x, x.flip(0), lambda logits: logits)


def test_checkpoint_errors(tmp_path, model):
    ckpt = model.save_pretrained(tmp_path / "ok")
    cases = tmp_path / "cases"
    for name, files, match in [
        ("nondict_bin", {"pytorch_model.bin": [torch.zeros(2)]}, "expected a state dict"),
        ("empty_config", {"config.json": {}}, "model_type None, expected 'vivit'"),
        ("no_weight_map", {"model.safetensors.index.json": {"metadata": {}}}, 'no "weight_map"'),
        (
            "outside",
            {"model.safetensors.index.json": {"weight_map": {"a": "../ok/model.safetensors"}}},
            "not a file in",
        ),
    ]:
        d = cases / name
        d.mkdir(parents=True)
        (d / "config.json").write_text((ckpt / "config.json").read_text())
        for fname, content in files.items():
            if fname.endswith(".bin"):
                torch.save(content, d / fname)
            else:
                (d / fname).write_text(json.dumps(content))
        with pytest.raises(ValueError, match=match):
            HookedViViT.from_pretrained(d)


# ============================================================================ 11. finiteness
def test_non_finite_weights_are_named_at_load_and_parity_fails_on_nan(model):
    hf = make_hf(SQUARE, seed=3)
    key, weight = next(
        (k, p) for k, p in hf.named_parameters() if ".1." in k and p.shape == (64, 32)
    )  # layer 1's MLP in
    with torch.no_grad():
        weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=re.escape(f"{key} [64, 32]: 1 of 2048")):
        HookedViViT.from_hf_model(hf)
    report = ParityReport([ParityRow("logits", (1, 6), float("nan"), float("nan"))], torch.float32, False)
    assert not report.ok() and report.first_failure() == "logits"
    with pytest.raises(ValueError, match="finite number"):
        report.ok(float("nan"))


def test_input_checked_after_the_cast_to_the_model_dtype(model, x):
    half = HookedViViT.from_hf_model(make_hf(SQUARE, seed=3), dtype=torch.float16)
    big = x.clone()
    big[0, 0, 0, 0, 0] = 1e5  # finite in fp32, inf in fp16
    with pytest.raises(ValueError, match="overflow the model's dtype float16"):
        half(big)
    assert torch.isfinite(half(x)).all()
