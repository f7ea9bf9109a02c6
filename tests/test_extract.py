"""Issue 20: activation extraction and the pair study over video collections, data-parallel under
torchrun (2 CPU processes, gloo), resumable. A tiny random ViViT and a few tiny clips written with
OpenCV keep each test to seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from hooked_vivit import HookedViViT
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import pipeline
from hooked_vivit.cli import main
from hooked_vivit.collection import ManifestError, read_clip, read_collection
from hooked_vivit.extract import iter_activations, load_activations, read_index
from hooked_vivit.output_dir import MANIFEST
from hooked_vivit.video import load_video, preprocess, write_video
from tests.conftest import make_hf

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    image_size=32,
    num_frames=4,
    tubelet_size=[2, 8, 8],
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    num_labels=3,
)
HOOKS = "blocks.0.hook_resid_post,blocks.1.hook_mlp_out"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model, its checkpoint dir, folder of clips, manifest with a broken and a missing file, pair manifest)."""
    root = tmp_path_factory.mktemp("collection")
    model = HookedViViT.from_hf_model(make_hf(TINY, seed=5))
    ckpt = model.save_pretrained(root / "model")
    clips = root / "clips"
    rng = np.random.default_rng(0)
    for i in range(7):  # 40x36 frames: resized and centre-cropped to 32x32; 3..9 frames (short ones padded)
        write_video(rng.integers(0, 256, (3 + i, 36, 40, 3), dtype=np.uint8), clips / f"clip{i}.mp4")
    broken = root / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    manifest = root / "clips.csv"
    rows = (
        ["path,label"]
        + [f"clips/clip{i}.mp4,class{i % 2}" for i in range(3)]
        + ["broken.mp4,bad", "clips/gone.mp4,missing"]
        + [f"clips/clip{i}.mp4,class{i % 2}" for i in range(3, 7)]
    )
    manifest.write_text("\n".join(rows) + "\n")
    pairs = root / "pairs.jsonl"
    lines = [{"path": f"clips/clip{2 * i}.mp4", "pair": f"p{i}", "role": "positive"} for i in range(3)]
    lines += [{"path": f"clips/clip{2 * i + 1}.mp4", "pair": f"p{i}", "role": "negative"} for i in range(3)]
    lines += [
        {"path": "clips/clip6.mp4", "pair": "p3", "role": "positive"},
        {"path": "clips/clip0.mp4", "pair": "p3", "role": "negative"},
        {"path": "clips/clip5.mp4", "pair": "p4", "role": "positive"},
        {"path": "clips/clip2.mp4", "pair": "p4", "role": "negative"},
        {"path": "broken.mp4", "pair": "p5", "role": "positive"},
        {"path": "clips/clip1.mp4", "pair": "p5", "role": "negative"},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return model, ckpt, clips, manifest, pairs


def torchrun(*args: str, nproc: int = 2, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "hooked_vivit.cli",
        *args,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def extract_here(*args: str) -> int:
    """A single-process run in this process, one thread as each torchrun worker has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["extract", *args])
    finally:
        torch.set_num_threads(threads)


def shard_contents(out: Path) -> list[tuple[str, dict, dict]]:
    result = []
    for p in sorted(out.glob("shard-*.safetensors")):
        with safe_open(str(p), framework="pt") as f:
            result.append((p.name, {k: f.get_tensor(k) for k in f.keys()}, f.metadata()))
    return result


def assert_same_output(a: Path, b: Path) -> None:
    sa, sb = shard_contents(a), shard_contents(b)
    assert [s[0] for s in sa] == [s[0] for s in sb]
    for (name, ta, ma), (_, tb, mb) in zip(sa, sb):
        assert ma == mb, name
        assert list(ta) == list(tb) and all(torch.equal(ta[k], tb[k]) for k in ta), name
    ia, ib = read_index(a), read_index(b)
    ia.pop("world_size"), ib.pop("world_size")
    assert ia == ib


# ============================================================================ collections and decoding
def test_read_clip_matches_load_video_and_time_windows(setup):
    _, _, clips, _, _ = setup
    frames, idx = read_clip(clips / "clip6.mp4", 4)  # 9 frames
    assert idx.tolist() == [0, 3, 5, 8] and np.array_equal(frames, load_video(clips / "clip6.mp4", 4))
    with pytest.warns(UserWarning, match="padding"):
        short = load_video(clips / "clip0.mp4", 4)
    frames, idx = read_clip(clips / "clip0.mp4", 4)  # 3 frames: the last one repeats
    assert idx.tolist() == [0, 1, 2, 2] and np.array_equal(frames, short)
    # 25 fps: 0.12 s .. 0.32 s is frames 3..7 (end exclusive); four spread over them.
    frames, idx = read_clip(clips / "clip6.mp4", 4, start=0.12, end=0.32)
    assert idx.tolist() == [3, 4, 6, 7] and np.array_equal(frames, load_video(clips / "clip6.mp4", 9)[[3, 4, 6, 7]])
    with pytest.raises(ValueError, match="past the end"):
        read_clip(clips / "clip6.mp4", 4, start=5.0)


def test_manifest_errors_name_the_line_and_what_was_expected(tmp_path, setup):
    _, _, clips, _, _ = setup
    cases = {
        "a.csv": ("path,lable\nx.mp4,1\n", r"line 1: unknown column\(s\) 'lable'; expected path"),
        "b.csv": ("label\nx\n", "line 2: no path"),
        "c.jsonl": ('{"path": "x.mp4", "role": "pos"}\n', "line 1: role 'pos'; expected positive or negative"),
        "d.jsonl": ('{"path": "x.mp4", "start": 2, "end": 1}\n', "line 1: end 1 s is not after start 2 s"),
        "e.csv": ("path,start\nx.mp4,soon\n", "line 2: start 'soon' is not a number of seconds"),
        "f.txt": ("x.mp4\n", "expected a folder of videos, a .csv or a .jsonl manifest"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ManifestError, match=message):
            read_collection(tmp_path / name)
    listed = read_collection(clips)  # a folder: sorted by relative path
    assert [c.file for c in listed] == [f"clip{i}.mp4" for i in range(7)] and [c.index for c in listed] == list(
        range(7)
    )


# ============================================================================ extract
def test_two_processes_write_exactly_what_one_does_and_the_rows_are_the_activations(setup, tmp_path):
    model, ckpt, _, manifest, _ = setup
    args = [
        "--model",
        str(ckpt),
        "--videos",
        str(manifest),
        "--hooks",
        HOOKS,
        "--positions",
        "0,5,17",
        "--shard-clips",
        "2",
        "--batch-size",
        "1",
        "--workers",
        "1",
        "--quiet",
    ]
    assert extract_here(*args, "--out", str(tmp_path / "one")) == 0
    proc = torchrun("extract", *args, "--out", str(tmp_path / "two"))
    assert "7 of 9 clips in 5 shard(s)" in proc.stdout and proc.stdout.count("wrote") == 1  # rank 0 reports
    assert_same_output(tmp_path / "one", tmp_path / "two")
    assert read_index(tmp_path / "two")["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [MANIFEST, "index.json"] + [
        f"shard-0000{k}.safetensors" for k in range(5)
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "two").iterdir()} == {0o666 & ~umask}

    # Every row is the activation of its clip at its token, with its frames: recomputed one clip at a time.
    index = read_index(tmp_path / "two")
    acts, prov = load_activations(tmp_path / "two", "blocks.1.hook_mlp_out")
    good = [c for c in index["clips"] if "error" not in c]
    assert prov["clip"].tolist() == [c_i for c_i, c in enumerate(index["clips"]) if "error" not in c for _ in range(3)]
    assert prov["token"].tolist() == [0, 5, 17] * len(good)
    assert (
        prov["frame_slot"].tolist()[:3] == [-1, 0, 1]
        and prov["row"].tolist()[:3] == [-1, 1, 0]
        and prov["col"].tolist()[:3] == [-1, 0, 0]
    )
    assert [p["frames"] for p in index["positions"]["tokens"]] == [None, [0, 1], [2, 3]]
    root = manifest.parent
    for c in good:
        frames, idx = read_clip(root / c["file"], 4)
        assert c["frame_indices"] == idx.tolist()
        _, cache = model.run_with_cache(preprocess(frames, config=model.cfg))
        rows = (prov["clip"] == index["clips"].index(c)).nonzero().flatten()
        torch.testing.assert_close(acts[rows], cache["blocks.1.hook_mlp_out"][0, [0, 5, 17]], rtol=1e-5, atol=1e-6)
    # Shards are read in order, one at a time; each holds the rows of its own clips.
    per_shard = [p["clip"].unique().tolist() for _, p in iter_activations(tmp_path / "two", "blocks.0.hook_resid_post")]
    assert per_shard == [[0, 1], [2], [5], [6, 7], [8]]


def test_a_broken_file_is_named_and_skipped(setup, tmp_path, capsys):
    _, ckpt, _, manifest, _ = setup
    assert (
        extract_here(
            "--model",
            str(ckpt),
            "--videos",
            str(manifest),
            "--hooks",
            "blocks.1.hook_resid_post",
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "0",
            "--quiet",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "7 of 9 clips in 1 shard(s)" in out and "; 2 file(s) skipped:" in out
    assert "broken.mp4: VideoReadError" in out and "clips/gone.mp4: FileNotFoundError" in out
    index = read_index(tmp_path / "o")
    assert [(e["clip"], e["file"]) for e in index["errors"]] == [(3, "broken.mp4"), (4, "clips/gone.mp4")]
    assert "no such video file" in index["clips"][4]["error"] and index["totals"] == {
        "clips": 9,
        "extracted": 7,
        "errors": 2,
        "rows": 7,
    }


def test_a_killed_run_resumes_without_duplicates(setup, tmp_path):
    _, ckpt, clips, _, _ = setup
    args = [
        "--model",
        str(ckpt),
        "--videos",
        str(clips),
        "--hooks",
        HOOKS,
        "--positions",
        "cls",
        "--shard-clips",
        "2",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--dtype",
        "bfloat16",
        "--quiet",
    ]
    assert extract_here(*args, "--out", str(tmp_path / "reference")) == 0
    out = tmp_path / "out"
    # Rank 0 (shards 0 and 2) is SIGKILLed while writing its second shard, after the temporary file is on disk.
    proc = torchrun("extract", *args, "--out", str(out), env={"HOOKED_VIVIT_TEST_KILL": "writing:2:0"}, check=False)
    assert proc.returncode != 0
    resume = tmp_path / ".out.resume"
    assert not out.exists() and resume.is_dir()
    left = sorted(p.name for p in resume.iterdir())
    assert "shard-00000.safetensors" in left and "shard-00002.safetensors" not in left
    assert any(n.startswith(".shard-00002.safetensors.") and n.endswith(".tmp") for n in left), left
    assert extract_here(*args, "--out", str(out)) == 0  # the same command, now in one process: resumes
    assert not resume.exists() and not any(p.name.endswith(".lock") for p in tmp_path.iterdir())
    assert_same_output(tmp_path / "reference", out)
    acts, prov = load_activations(out, "blocks.0.hook_resid_post")
    assert prov["clip"].tolist() == list(range(7)) and acts.dtype == torch.bfloat16  # each clip once, in order


def test_resume_refuses_other_settings_and_never_takes_foreign_files(setup, tmp_path, capsys):
    _, ckpt, clips, _, _ = setup
    out = tmp_path / "out"
    resume = tmp_path / ".out.resume"
    base = [
        "--model",
        str(ckpt),
        "--videos",
        str(clips),
        "--shard-clips",
        "3",
        "--workers",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    env = {"HOOKED_VIVIT_TEST_KILL": "after:1"}
    code = subprocess.run(
        [sys.executable, "-m", "hooked_vivit.cli", "extract", *base, "--hooks", "blocks.0.hook_resid_post"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        timeout=300,
    ).returncode
    assert code == -9 and sorted(p.name for p in resume.iterdir()) == [
        ".hooked-vivit-resume.json",
        "shard-00000.safetensors",
    ]
    assert extract_here(*base, "--hooks", "blocks.1.hook_resid_post") == 2
    assert "other settings (differing in hooks)" in capsys.readouterr().err
    (resume / "notes.txt").write_text("mine")
    assert extract_here(*base, "--hooks", "blocks.1.hook_resid_post", "--overwrite") == 2
    assert "notes.txt" in capsys.readouterr().err and (resume / "notes.txt").read_text() == "mine"
    (resume / "notes.txt").unlink()
    assert (
        extract_here(*base, "--hooks", "blocks.1.hook_resid_post", "--overwrite") == 0
    )  # old pieces discarded, run redone
    assert list(read_index(out)["hooks"]) == ["blocks.1.hook_resid_post"] and not resume.exists()
    assert (
        extract_here(*base, "--hooks", "blocks.1.hook_resid_post") == 2
    )  # finished: an earlier output, as for analyze
    assert "earlier output of hooked-vivit extract" in capsys.readouterr().err


def test_extract_flag_errors_are_one_line(setup, tmp_path, capsys):
    _, ckpt, clips, _, _ = setup
    base = ["--model", str(ckpt), "--videos", str(clips), "--out", str(tmp_path / "o"), "--quiet"]
    for extra, message in (
        (["--hooks", "blocks.9.hook_resid_post"], "blocks.9.hook_resid_post"),
        (["--hooks", "blocks.0.attn.hook_pattern"], "without a token axis"),
        (["--hooks", "blocks.0.hook_resid_post", "--positions", "0,99"], "token indices in [0, 33)"),
        (["--hooks", "nothing.*"], "matches no hook"),
    ):
        assert extract_here(*base, *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before anything was written; no lock left


# ============================================================================ study --pairs
@pytest.mark.filterwarnings("ignore:clip has 3 frames")
def test_study_over_pairs_in_two_processes_equals_the_per_pair_functions(setup, tmp_path):
    model, ckpt, clips, _, pairs = setup
    proc = torchrun("study", "--pairs", str(pairs), "--model", str(ckpt), "--out", str(tmp_path / "study"), "--quiet")
    assert "over 5 pairs; 1 pair(s) skipped" in proc.stdout and "p5: broken.mp4: VideoReadError" in proc.stdout
    st = json.loads((tmp_path / "study" / "results.json").read_text())["studies"][0]
    assert st["pair_ids"] == ["p0", "p1", "p2", "p3", "p4"] and st["world_size"] == 2

    root = pairs.parent
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    x = {}
    for r in rows[:10]:
        x[(r["pair"], r["role"])] = preprocess(load_video(root / r["path"], 4), config=model.cfg)
    direct = [(x[(p, "positive")], x[(p, "negative")]) for p in st["pair_ids"]]
    deltas, head, ablation_change = [], [], []
    for i, (p, n) in enumerate(direct):
        d = ex.activation_deltas(model, p, n)
        deltas.append([d.at_readout[k] for k in ex.KINDS])
        rec = ex.component_recovery(model, p, n)["variants"][ex.HEADLINE_RECOVERY]
        head.append([rec["attn"], rec["mlp"]])
        c = int(model(p).argmax())
        o = ex.outcome_analysis(model, p, n, c, pair_masks=None, divergence_frame=None, seed=i)
        ablation_change.append(o.ablation.regions["top class-DLA tokens"].logit_gap.change)
    np.testing.assert_allclose(st["deltas_cls"]["per_pair"], deltas, rtol=1e-5)
    np.testing.assert_allclose(st["deltas_cls"]["mean"], np.mean(deltas, 0), rtol=1e-5)
    head = np.array(head)
    attn = st["recovery"][st["headline"]]["attn"]
    np.testing.assert_allclose(attn["per_pair"], head[:, 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(attn["ci95"], pipeline._stat(head[:, 0])["ci95"], rtol=1e-4, atol=1e-7)
    gap = head[:, 1].mean(1) - head[:, 0].mean(1)
    assert st["mlp_minus_attn"]["mean"] == pytest.approx(gap.mean(), rel=1e-5, abs=1e-8)
    e = st["outcome"]["ablation"]["top class-DLA tokens"]["logit_gap"]["change"]
    assert e["mean"] == pytest.approx(np.mean(ablation_change), rel=1e-4, abs=1e-6) and st["outcome"]["pairs"] == 5
    probes = ex.layer_probes(model, direct)  # all pairs at once, as the rendered study runs them
    assert [r["accuracy"] for r in st["probes"]["cls"]] == pytest.approx([r.accuracy for r in probes.cls])
    assert st["probes"]["pixels"]["paired_accuracy"] == pytest.approx(probes.pixels.paired_accuracy)
    # the nested probe and its random-weights control (each rank builds the same random model, seed 0)
    assert st["probes"]["nested"]["paired_accuracy"] == pytest.approx(probes.nested.paired_accuracy)
    assert st["probes"]["random_weights"]["paired_accuracy"] == pytest.approx(probes.random_weights.paired_accuracy)
    assert (tmp_path / "study" / "report.html").is_file()


def test_study_pairs_manifest_errors(setup, tmp_path, capsys):
    _, ckpt, _, _, pairs = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"path": "a.mp4", "pair": "x", "role": "positive"}\n{"path": "b.mp4", "pair": "x", "role": "positive"}\n'
    )
    assert main(["study", "--pairs", str(bad), "--model", str(ckpt), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert "pair 'x' has two positive clips (a.mp4, b.mp4)" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# ============================================================================ issue 32: resume ties, overflow, disk full, BOM
def killed_after_first_shard(*args: str) -> None:
    """Run extract in a child process that is SIGKILLed once its first shard is on disk; one thread, as
    extract_here (the resumed run) has: other thread counts may sum in other orders (MKL_CBWR=COMPATIBLE does)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hooked_vivit.cli", "extract", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HOOKED_VIVIT_TEST_KILL": "after:1"},
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]


def variant(model, tmp_path: Path, name: str, change) -> Path:
    """A copy of ``model`` with ``change`` applied to its weights, saved as a checkpoint."""
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        change(other)
    return other.save_pretrained(tmp_path / name)


def test_weights_fingerprint_hashes_every_value():
    from hooked_vivit import loading
    from hooked_vivit.extract import load_model

    model = HookedViViT.from_hf_model(make_hf(TINY, seed=5))
    a = loading.weights_fingerprint(model)
    assert len(a) == 64 and int(a, 16) >= 0 and loading.weights_fingerprint(make_copy(model)) == a
    with torch.no_grad():
        model.blocks[0].attn.W_Q.neg_()  # the same sum of |weights|: the old fingerprint could not tell
    b = loading.weights_fingerprint(model)
    with torch.no_grad():
        model.blocks[0].attn.W_Q.neg_()
        model.blocks[1].mlp.b_out[3] += 1e-6  # one value, by less than the old 3 decimals
    assert b != a and loading.weights_fingerprint(model) not in (a, b)
    assert loading.weights_fingerprint(make_copy(model).to(torch.float64)) != loading.weights_fingerprint(model)
    assert pipeline.weights_fingerprint is loading.weights_fingerprint  # one function (study summary, SAE, extract)
    organism = load_model("actions")  # the shipped study summary is tied to the shipped weights' hash
    assert pipeline.load_study_summary(organism)["weights_fingerprint"] == loading.weights_fingerprint(organism)


def make_copy(model):
    import copy

    return copy.deepcopy(model)


def test_resume_refuses_a_model_whose_weights_differ(setup, tmp_path, capsys):
    model, ckpt, clips, _, _ = setup
    negated = variant(model, tmp_path, "negated", lambda m: m.blocks[0].attn.W_Q.neg_())
    out = tmp_path / "out"
    base = ["--videos", str(clips), "--hooks", HOOKS, "--shard-clips", "2", "--workers", "0", "--quiet"]
    killed_after_first_shard("--model", str(ckpt), *base, "--out", str(out))
    assert extract_here("--model", str(negated), *base, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings (differing in model)" in err, err
    assert extract_here("--model", str(ckpt), *base, "--out", str(out)) == 0  # the same model resumes
    assert extract_here("--model", str(ckpt), *base, "--out", str(tmp_path / "reference")) == 0
    assert_same_output(tmp_path / "reference", out)


def test_resume_refuses_a_clip_whose_bytes_changed(setup, tmp_path, capsys):
    import hashlib
    import shutil

    _, ckpt, clips, _, _ = setup
    mine = tmp_path / "clips"
    shutil.copytree(clips, mine)
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"clips/clip{i}.mp4\n" for i in range(7)))
    out = tmp_path / "out"
    base = ["--model", str(ckpt), "--videos", str(listing), "--hooks", HOOKS, "--shard-clips", "2", "--workers", "0"]
    base += ["--quiet", "--out", str(out)]
    killed_after_first_shard(*base)
    frames = np.random.default_rng(1).integers(0, 256, (6, 36, 40, 3), dtype=np.uint8)
    write_video(frames, mine / "clip3.mp4")  # same name, other pixels: the manifest is unchanged
    assert extract_here(*base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (
        f"--videos: clips/clip3.mp4 (its bytes differ) changed since the unfinished run in {tmp_path / '.out.resume'}"
        in err
    )
    assert "put the original file(s) back to resume it, or pass --overwrite" in err
    (mine / "clip3.mp4").unlink()
    assert extract_here(*base) == 2
    assert "clip3.mp4 (now missing) changed" in capsys.readouterr().err
    write_video(frames, mine / "clip3.mp4")
    assert extract_here(*base, "--overwrite") == 0  # the old shards are discarded, every clip redone
    index = read_index(out)
    assert [c["sha256"] for c in index["clips"]] == [
        hashlib.sha256((tmp_path / c["file"]).read_bytes()).hexdigest() for c in index["clips"]
    ]
    assert index["settings"]["clip_sha256"] == [c["sha256"] for c in index["clips"]]


def test_float16_overflow_is_refused_with_the_count(setup, tmp_path, capsys):
    model, _, clips, _, _ = setup
    big = variant(model, tmp_path, "big", lambda m: m.blocks[1].mlp.W_out.mul_(1e6))
    base = ["--model", str(big), "--videos", str(clips), "--hooks", HOOKS, "--positions", "all", "--workers", "0"]
    base += ["--quiet", "--shard-clips", "4"]
    assert extract_here(*base, "--out", str(tmp_path / "f32"), "--dtype", "float32") == 0
    acts, prov = load_activations(tmp_path / "f32", "blocks.1.hook_mlp_out")
    first = prov["clip"] < 4  # shard 0
    over = int(acts[first].to(torch.float16).isinf().sum())
    values = int(first.sum()) * (16 + 16)  # two hooks of d_model 16
    assert 0 < over < values and acts.isfinite().all()
    out = tmp_path / "f16"
    assert extract_here(*base, "--out", str(out), "--dtype", "float16") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (
        f"--dtype float16: {over} of {values} values of shard 0 (clips 0-3; blocks.1.hook_mlp_out: {over}) lie "
        "beyond float16's largest value 65504 and would be stored as inf; the shard was not written. Use --dtype "
        f"bfloat16 (float32's range) or float32, with --overwrite to discard the unfinished run in {tmp_path / '.f16.resume'}"
    ) in err
    assert sorted(p.name for p in (tmp_path / ".f16.resume").iterdir()) == [".hooked-vivit-resume.json"]
    assert extract_here(*base, "--out", str(out), "--dtype", "bfloat16", "--overwrite") == 0
    stored, _ = load_activations(out, "blocks.1.hook_mlp_out")
    assert stored.isfinite().all()
    torch.testing.assert_close(stored.float(), acts, rtol=torch.finfo(torch.bfloat16).eps, atol=0)  # rounds by eps/2


def test_disk_full_is_one_line_and_keeps_the_finished_shards(setup, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    _, ckpt, clips, _, _ = setup
    real, calls = safetensors.torch.save_file, []

    def full_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # what safetensors raises on ENOSPC (checked on a full tmpfs)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_on_second)
    out = tmp_path / "out"
    base = ["--model", str(ckpt), "--videos", str(clips), "--hooks", HOOKS, "--shard-clips", "2", "--workers", "0"]
    base += ["--quiet", "--out", str(out)]
    assert extract_here(*base) == 2
    err = capsys.readouterr().err
    resume = tmp_path / ".out.resume"
    assert err == (
        f"hooked-vivit extract: error: disk full: no space left on the device holding {resume} while writing "
        "shard 1 (nothing of it was kept); the 1 finished shard(s) there are kept: free some space and rerun the "
        "same command to resume\n"
    )
    assert sorted(p.name for p in resume.iterdir()) == [".hooked-vivit-resume.json", "shard-00000.safetensors"]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert extract_here(*base) == 0 and len(calls) == 2  # resumed: shard 0 was not redone
    assert extract_here(*base[:-1], str(tmp_path / "reference")) == 0
    assert_same_output(tmp_path / "reference", out)


def test_manifests_with_a_byte_order_mark(setup, tmp_path):
    _, _, clips, manifest, _ = setup
    bom = manifest.parent / "bom.csv"  # as Excel saves "CSV UTF-8": the columns are path and label
    bom.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert read_collection(bom) == read_collection(manifest) and len(read_collection(bom)) == 9
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps({"path": str(clips / "clip0.mp4"), "label": "é"}).encode() + b"\n")
    assert [(c.path, c.label) for c in read_collection(jsonl)] == [(str(clips / "clip0.mp4"), "é")]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\nx.mp4,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"latin.csv: not UTF-8 text \(byte 20 cannot be decoded\); save"):
        read_collection(latin)


def test_a_run_killed_inside_safetensors_own_temporary_file_resumes(setup, tmp_path, monkeypatch):
    """safetensors' save_file writes through a '.tmpXXXXXX' file of its own beside the target: a process stopped
    inside it leaves that file in the resume folder, which the next run removes instead of refusing the folder."""
    import safetensors.torch

    _, ckpt, clips, _, _ = setup
    real, calls = safetensors.torch.save_file, []

    def stopped_on_second(tensors, filename, metadata=None):
        calls.append(1)
        if len(calls) == 2:  # what a SIGKILL inside save_file leaves behind, then the process is gone
            (Path(filename).parent / ".tmpAb3dE9").write_bytes(b"\x08\x00\x00\x00")
            raise KeyboardInterrupt
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", stopped_on_second)
    out = tmp_path / "out"
    base = ["--model", str(ckpt), "--videos", str(clips), "--hooks", HOOKS, "--shard-clips", "2", "--workers", "0"]
    base += ["--quiet", "--out", str(out)]
    assert extract_here(*base) == 130
    resume = tmp_path / ".out.resume"
    assert ".tmpAb3dE9" in {p.name for p in resume.iterdir()}
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert extract_here(*base) == 0 and not resume.exists()
    assert extract_here(*base[:-1], str(tmp_path / "reference")) == 0
    assert_same_output(tmp_path / "reference", out)
