"""Issue 32: --overwrite deletes only what the library wrote, inside the output, and never a command's
input; a leftover resume folder, an --out under a file and stale locks get a clear way out.
Every test here failed on the code before the fix."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit import output_dir as od
from hooked_vivit.cli import main
from hooked_vivit.extract import read_index
from hooked_vivit.output_dir import MANIFEST, RESUME_STATE, OutputDir, OutputDirError
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
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return HookedViViT.from_hf_model(make_hf(TINY, seed=5)).save_pretrained(tmp_path_factory.mktemp("m") / "model")


def render(out, *extra) -> int:
    return main(["render", "--domain", "bowling", "--frames", "8", "--size", "32", "--out", str(out), *extra])


def extract(ckpt, videos, out, *extra) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(
            ["extract", "--model", str(ckpt), "--videos", str(videos), "--hooks", HOOK, "--workers", "0", "--quiet"]
            + ["--out", str(out), *extra]
        )
    finally:
        torch.set_num_threads(threads)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ============================================================================ 1. the manifest is not trusted
def test_overwrite_never_deletes_what_the_manifest_names_outside_the_output(tmp_path, capsys):
    out = tmp_path / "o"
    assert render(out) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    absolute = tmp_path / "elsewhere" / "abs.txt"
    absolute.parent.mkdir()
    absolute.write_text("also mine")
    escape = tmp_path / "escape"
    escape.mkdir()
    (escape / "deep.txt").write_text("deep")
    manifest = json.loads((out / MANIFEST).read_text())
    forged = ["../victim.txt", str(absolute), "../escape/deep.txt", "../escape/"]
    manifest["files"] += forged
    for name in forged[:3]:  # even with the right size and hash
        p = out / name  # an absolute name stays absolute
        manifest.setdefault("content", {})[name] = {"size": p.stat().st_size, "sha256": sha256(p)}
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"outside .*left alone"):
        assert render(out, "--overwrite") == 0
    assert victim.read_text() == "mine" and absolute.read_text() == "also mine"
    assert (escape / "deep.txt").read_text() == "deep"
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST,
        "frames.png",
        "meta.json",
        "negative.mp4",
        "positive.mp4",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "escape", "o", "victim.txt"]  # no .old left


def test_manifest_records_size_and_hash_and_a_changed_file_is_never_deleted(tmp_path, capsys):
    out = tmp_path / "o"
    assert render(out) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == ["frames.png", "meta.json", "negative.mp4", "positive.mp4"]
    assert manifest["content"]["meta.json"] == {
        "size": (out / "meta.json").stat().st_size,
        "sha256": sha256(out / "meta.json"),
    }
    # The user edits a file the library wrote: it is theirs now, and the output is not replaced.
    (out / "meta.json").write_text('{"my": "notes"}')
    assert render(out, "--overwrite") == 2
    err = one_line_error(capsys)
    assert "meta.json" in err and "changed since hooked-vivit wrote" in err
    assert (out / "meta.json").read_text() == '{"my": "notes"}'
    # The same size, other bytes: the hash tells.
    good = json.loads((out / MANIFEST).read_text())["content"]
    positive = (out / "positive.mp4").read_bytes()
    (out / "meta.json").write_text("x" * good["meta.json"]["size"])
    assert render(out, "--overwrite") == 2
    assert "meta.json" in one_line_error(capsys) and (out / "positive.mp4").read_bytes() == positive
    # A symlink put where a listed file was is not the file the library wrote.
    (out / "meta.json").unlink()
    (out / "meta.json").symlink_to(tmp_path / "victim.txt")
    (tmp_path / "victim.txt").write_text("mine")
    assert render(out, "--overwrite") == 2
    assert "meta.json" in one_line_error(capsys) and (tmp_path / "victim.txt").read_text() == "mine"


def test_an_old_manifest_without_hashes_is_never_emptied(tmp_path, capsys):
    out = tmp_path / "o"
    assert render(out) == 0
    before = contents(out)
    old = {"written_by": "hooked-vivit render", "files": json.loads((out / MANIFEST).read_text())["files"]}
    (out / MANIFEST).write_text(json.dumps(old))
    before[MANIFEST] = (out / MANIFEST).read_bytes()
    assert render(out, "--overwrite") == 2
    err = one_line_error(capsys)
    assert "records no size and hash" in err and str(out) in err
    assert contents(out) == before


def test_removal_keeps_inputs_unverified_and_escaping_entries(tmp_path):
    """The last step, on its own: even a listed, verified file is kept when it is an input."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "a.txt").write_text("a")
    (old / "clip.mp4").write_text("clip")
    (old / "sub").mkdir()
    (old / "sub" / "b.txt").write_text("b")
    (old / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "c.txt").write_text("c")
    od._write_manifest(old, "test")
    with pytest.warns(UserWarning, match="clip.mp4"):
        od._remove_listed(old, keep=[Path(os.path.realpath(old / "clip.mp4"))])
    assert sorted(p.name for p in old.iterdir()) == ["clip.mp4"]
    assert (tmp_path / "outside" / "c.txt").read_text() == "c"


# ============================================================================ 2-3. inputs of extract and study
def test_extract_overwrite_never_deletes_its_input_clips(tmp_path, capsys, ckpt):
    rr = tmp_path / "rr"
    assert render(rr) == 0
    clips = contents(rr)
    videos = tmp_path / "m.csv"
    videos.write_text("path\nrr/positive.mp4\nrr/negative.mp4\n")
    assert extract(ckpt, videos, rr, "--overwrite") == 2
    err = one_line_error(capsys)
    assert "holds the input" in err and "positive.mp4" in err
    assert contents(rr) == clips
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "rr"]  # no lock, no resume folder


def test_study_overwrite_never_deletes_its_input_clips(tmp_path, capsys, ckpt):
    rr = tmp_path / "rr"
    assert render(rr) == 0
    clips = contents(rr)
    pairs = tmp_path / "m.jsonl"
    rows = [
        {"path": f"rr/{role}.mp4", "pair": f"p{i}", "role": role} for i in range(3) for role in ("positive", "negative")
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["study", "--model", str(ckpt), "--pairs", str(pairs), "--out", str(rr), "--overwrite", "--quiet"]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "holds the input" in err and "positive.mp4" in err
    assert contents(rr) == clips


# ============================================================================ weak messages
def test_out_under_a_file_names_out_and_the_file(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    assert render(blocker / "sub" / "pair") == 2
    err = one_line_error(capsys)
    assert f"--out {blocker / 'sub' / 'pair'}: {blocker} is a file, not a folder" in err
    assert blocker.read_text() == "mine"


def _fail_final_manifest(monkeypatch):
    """The final manifest write of a resume folder fails (a full disk): json.dumps of a manifest raises."""
    real = json.dumps

    class Json:
        loads = staticmethod(json.loads)

        @staticmethod
        def dumps(obj, **kwargs):
            if isinstance(obj, dict) and "files" in obj and "written_by" in obj:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(obj, **kwargs)

    monkeypatch.setattr(od, "json", Json)


def test_a_failed_final_manifest_write_leaves_a_resumable_folder(tmp_path, capsys, ckpt, monkeypatch):
    clips = tmp_path / "clips"
    assert render(clips) == 0
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _fail_final_manifest(m)
        assert extract(ckpt, clips, out) == 2
    assert "No space left on device" in one_line_error(capsys)
    resume = tmp_path / ".out.resume"
    assert not out.exists() and resume.is_dir()
    assert sorted(p.name for p in resume.iterdir()) == [RESUME_STATE, "index.json", "shard-00000.safetensors"]
    assert extract(ckpt, clips, out) == 0  # the same command resumes and finishes
    assert read_index(out)["totals"]["extracted"] == 2 and not resume.exists()


def test_a_resume_folder_without_its_settings_is_discarded_with_overwrite(tmp_path, capsys, ckpt):
    """What a failed final write left before the fix: pieces, no settings file, a half-written manifest."""
    clips = tmp_path / "clips"
    assert render(clips) == 0
    out = tmp_path / "out"
    resume = tmp_path / ".out.resume"
    resume.mkdir()
    (resume / "shard-00000.safetensors").write_bytes(b"old piece")
    (resume / "index.json").write_text("{}")
    (resume / MANIFEST).write_text('{"written_by": "hooked-vivit extract", "fi')
    assert extract(ckpt, clips, out) == 2
    err = one_line_error(capsys)
    assert f"{resume}" in err and "settings were not recorded" in err and "--overwrite" in err
    assert "did not write" not in err and (resume / "shard-00000.safetensors").read_bytes() == b"old piece"
    assert extract(ckpt, clips, out, "--overwrite") == 0
    assert read_index(out)["totals"]["extracted"] == 2 and not resume.exists()
    # A foreign file in it is still never taken, with or without --overwrite.
    resume.mkdir()
    (resume / "notes.txt").write_text("mine")
    assert extract(ckpt, clips, tmp_path / "out2", "--overwrite") == 0  # another output: another resume folder
    assert extract(ckpt, clips, out, "--overwrite") == 2
    assert "notes.txt" in one_line_error(capsys) and (resume / "notes.txt").read_text() == "mine"


def test_stale_and_garbage_locks_are_reclaimed_a_held_one_is_not(tmp_path, capsys):
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for stale in (str(sleeper.pid), "garbage", ""):  # a live unrelated pid, garbage, an empty file
            lock.write_text(stale)
            assert render(out, "--overwrite") == 0, capsys.readouterr().err
            assert not lock.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # A lock held right now (its owner has not written its pid yet) is respected.
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert render(out, "--overwrite") == 2
        assert "another hooked-vivit run is writing" in one_line_error(capsys)
    lock.unlink()
    # ... and so is one held by a live run in another process, which names its pid.
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from hooked_vivit.output_dir import OutputDir
        with OutputDir({str(out)!r}, overwrite=True):
            print("ready", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert render(out, "--overwrite") == 2
        assert f"another hooked-vivit run (pid {holder.pid}) is writing" in one_line_error(capsys)
    finally:
        holder.kill()
        holder.wait()
    # Its owner killed (SIGKILL: no cleanup), the lock is free.
    assert lock.exists()
    assert render(out, "--overwrite") == 0 and not lock.exists()
    with OutputDir(out, overwrite=True), pytest.raises(OutputDirError, match=f"pid {os.getpid()}"):
        OutputDir(out, overwrite=True).__enter__()  # the same process twice


def test_record_written_records_the_hash_and_a_rewrite_needs_it_again(tmp_path, capsys):
    out = tmp_path / "o"
    assert render(out) == 0
    (out / "metrics.json").write_text('{"acc": 1}')
    od.record_written(out, "metrics.json", "not-written.json")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == ["frames.png", "meta.json", "metrics.json", "negative.mp4", "positive.mp4"]
    assert manifest["content"]["metrics.json"] == {"size": 10, "sha256": sha256(out / "metrics.json")}
    (out / "metrics.json").write_text('{"acc": 0.5}')  # rewritten without recording it
    assert render(out, "--overwrite") == 2 and "metrics.json" in one_line_error(capsys)
    od.record_written(out, "metrics.json")
    assert render(out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST,
        "frames.png",
        "meta.json",
        "negative.mp4",
        "positive.mp4",
    ]
    with pytest.raises(ValueError, match="not a name inside"):
        od.record_written(out, "../victim.txt")
