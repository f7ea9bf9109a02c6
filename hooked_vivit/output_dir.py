"""Output directories that appear whole or not at all and never take a file the library did not write.

Every directory hooked-vivit writes (``analyze``, ``study``, ``render``, ``save_pretrained``) carries a
manifest, ``.hooked-vivit-manifest.json``, naming each file and folder the library put there. Then:

- a new or empty target is filled; a target holding anything its manifest does not list is refused,
  naming those files, with or without ``overwrite`` (``--out .`` or a folder of clips is never emptied);
- an earlier hooked-vivit output is replaced only with ``overwrite``, and only its listed files are
  deleted (never ``rmtree``); a target that is, or holds, one of the run's inputs, or the current
  directory, is refused;
- the checks and a lock (``.NAME.lock`` beside the target, holding the pid) come before the work, so a
  second run into the same directory is refused at once; the final rename fails if the target
  appeared meanwhile (rename(2) never replaces a non-empty directory);
- a symlinked target is followed (the link then points at the new directory);
- SIGTERM cleans up like Ctrl-C; folders get the user's umask (``os.mkdir``), not mkdtemp's 0700.

``record_written`` adds files the library writes into its own output later (the organism's metrics
and model card) to the manifest.

Resume mode (``OutputDir.resumable``, used by ``extract``): a long run writes its pieces one by one
into a fixed hidden sibling, ``.NAME.resume``, instead of a random ``.partial`` one, and an interrupted
run leaves that folder in place rather than removing it. Every piece is written to a temporary name
and renamed, so the folder never holds half a piece, only stale temporary files (removed on resume).
The same checks and lock come first; the folder records the run's settings, and a later run with
the same settings continues in it, one with other settings is refused (with ``overwrite`` the old
pieces are deleted: only names the run recognises as its own, never anything else). On success
the folder gets its manifest and is renamed to the target exactly as ``writing()`` does.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

MANIFEST = ".hooked-vivit-manifest.json"
RESUME_STATE = ".hooked-vivit-resume.json"  # in a resume folder: who writes it and with which settings


class OutputDirError(FileExistsError):
    """An output directory that may not be written (the message says why and what to do)."""


def _entries(directory: Path) -> list[str]:
    """Every file and folder under ``directory``, relative, folders with a trailing '/'; links not followed."""
    out = []
    for root, dirs, files in os.walk(directory):
        rel = Path(root).relative_to(directory)
        out += [(rel / d).as_posix() + "/" if not (Path(root) / d).is_symlink() else (rel / d).as_posix() for d in dirs]
        out += [(rel / f).as_posix() for f in files]
    return sorted(out)


def _manifest(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def _named(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


class OutputDir:
    """A reserved output directory: checked and locked on ``__enter__`` (before the work), filled
    through ``writing()``, unlocked on ``__exit__``.

    ``inputs`` are files or folders the run reads; a target that is or holds one is refused.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        inputs: Iterable[str | Path | None] = (),
        writer: str = "hooked-vivit",
    ):
        self.path = Path(path)  # as the user gave it, for messages
        self.target = Path(os.path.realpath(self.path.expanduser()))  # symlinks followed
        self.overwrite = overwrite
        self.inputs = [Path(os.path.realpath(Path(p).expanduser())) for p in inputs if p is not None]
        self.writer = writer
        self._lock: Path | None = None
        self._replacing = False
        self._old_sigterm = None

    # ------------------------------------------------------------------ checks
    def _shown(self) -> str:
        plain = Path(os.path.abspath(self.path.expanduser())) == self.target  # no symlink on the way
        return str(self.path) if plain else f"{self.path} (-> {self.target})"

    def check(self) -> bool:
        """Raise OutputDirError unless the target may be written; True when it holds an earlier
        output that ``overwrite`` allows replacing."""
        t, shown = self.target, self._shown()
        cwd = Path(os.path.realpath(Path.cwd()))
        if _inside(cwd, t):
            raise OutputDirError(
                f"{shown} is the current directory or one above it; name a new subdirectory for the output"
            )
        for inp in self.inputs:
            if _inside(inp, t):
                raise OutputDirError(
                    f"{shown} holds the input {inp}; write the output elsewhere (inputs are never touched)"
                )
            if _inside(t, inp):
                raise OutputDirError(
                    f"{shown} lies inside the input {inp}; write the output elsewhere (inputs are never touched)"
                )
        if not (t.exists() or t.is_symlink()):
            return False
        if not t.is_dir():
            raise OutputDirError(f"{shown} exists and is not a directory; choose a new directory")
        entries = _entries(t)
        if not entries:
            return False
        manifest = _manifest(t)
        listed = set(manifest["files"]) if manifest else set()
        foreign = [e for e in entries if e != MANIFEST and e not in listed]
        # A foreign folder is named once, not with everything inside it.
        foreign = [e for e in foreign if not any(e != f and e.startswith(f) for f in foreign if f.endswith("/"))]
        if foreign:
            raise OutputDirError(
                f"{shown} holds {len(foreign)} file(s) hooked-vivit did not write ({_named(foreign)}); such a directory is "
                "never emptied or overwritten: choose a new or empty directory"
            )
        if not self.overwrite:
            raise OutputDirError(
                f"{shown} holds an earlier output of {manifest['written_by'] if manifest else 'hooked-vivit'}; pass --overwrite "
                "(overwrite=True) to replace it, or choose another directory"
            )
        return True

    # ------------------------------------------------------------------ lock and signals
    def _take_lock(self) -> None:
        lock = self.target.parent / f".{self.target.name}.lock"
        self.target.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                try:
                    pid = int(lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid == 0 or _alive(pid):  # 0: its owner is still writing the pid
                    raise OutputDirError(
                        f"another hooked-vivit run{f' (pid {pid})' if pid else ''} is writing {self._shown()} (lock {lock}); "
                        "wait for it to finish or choose another directory"
                    ) from None
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._lock = lock
            return
        raise OutputDirError(f"could not take the lock {lock}")

    def __enter__(self) -> OutputDir:
        self._replacing = self.check()
        self._take_lock()
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # SIGTERM unwinds like Ctrl-C, so the partial directory and the lock are removed.
            self._old_sigterm = signal.signal(signal.SIGTERM, _terminate)
        return self

    def __exit__(self, *exc) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None

    # ------------------------------------------------------------------ writing
    @contextmanager
    def writing(self) -> Iterator[Path]:
        """Yield a hidden sibling folder to fill; on success it becomes the target, else it is removed."""
        if self._lock is None:
            raise RuntimeError(
                "OutputDir.writing() needs the directory reserved first: use `with OutputDir(...) as out:`"
            )
        tmp = self.target.parent / f".{self.target.name}.{secrets.token_hex(4)}.partial"
        os.mkdir(tmp)  # mode 0o777 minus the umask
        try:
            yield tmp
            (tmp / MANIFEST).write_text(
                json.dumps({"written_by": self.writer, "files": _entries(tmp)}, indent=1) + "\n"
            )
            self._commit(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # every file in it is ours
            raise

    @property
    def resume_folder(self) -> Path:
        return self.target.parent / f".{self.target.name}.resume"

    @contextmanager
    def resumable(self, settings: dict, owned: Callable[[str], bool] | str) -> Iterator[Path]:
        """Resume mode (module docstring): yield ``.NAME.resume``, created or continued; on success it
        becomes the target, on failure or interruption it stays for the next run with the same
        ``settings`` (a JSON-able dict). ``owned`` says which file names in it are the run's own
        pieces (a callable or a regular expression); the folder may hold nothing else."""
        if self._lock is None:
            raise RuntimeError(
                "OutputDir.resumable() needs the directory reserved first: use `with OutputDir(...) as out:`"
            )
        if isinstance(owned, str):
            owned = re.compile(owned).fullmatch
        folder = self.resume_folder
        settings = json.loads(json.dumps(settings))  # as it reads back from disk
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise OutputDirError(
                f"{folder} exists and is not a folder hooked-vivit made; move it away to run into {self._shown()}"
            )
        if folder.is_dir():
            entries = _entries(folder)
            foreign = [
                e for e in entries if e != RESUME_STATE and not e.startswith(f".{RESUME_STATE}.") and not owned(e)
            ]
            if foreign or not (folder / RESUME_STATE).is_file():
                raise OutputDirError(
                    f"{folder} (an unfinished run's folder) holds file(s) hooked-vivit did not write "
                    f"({_named(foreign or ['no ' + RESUME_STATE])}); it is left alone: move them away or choose another output directory"
                )
            try:
                state = json.loads((folder / RESUME_STATE).read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("settings") != settings:
                old = state.get("settings") or {}
                differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                if not self.overwrite:
                    raise OutputDirError(
                        f"{self._shown()}: an unfinished run with other settings (differing in {_named(differ)}) is in {folder}; "
                        "rerun with its settings to finish it, or pass --overwrite (overwrite=True) to discard its pieces"
                    )
                for e in sorted(entries, key=lambda r: -r.count("/")):
                    p = folder / e.rstrip("/")
                    p.rmdir() if e.endswith("/") else p.unlink()  # all owned (checked above)
                _write_atomic(folder / RESUME_STATE, {"written_by": self.writer, "settings": settings})
        else:
            os.mkdir(folder)
            _write_atomic(folder / RESUME_STATE, {"written_by": self.writer, "settings": settings})
        yield folder
        (folder / RESUME_STATE).unlink()
        (folder / MANIFEST).write_text(
            json.dumps({"written_by": self.writer, "files": _entries(folder)}, indent=1) + "\n"
        )
        try:
            self._commit(folder)
        except BaseException:
            # Back to a resumable folder: the pieces stay for the next run.
            (folder / MANIFEST).unlink(missing_ok=True)
            _write_atomic(folder / RESUME_STATE, {"written_by": self.writer, "settings": settings})
            raise

    def _commit(self, tmp: Path) -> None:
        t = self.target
        occupied = t.is_dir() and bool(_entries(t))
        if occupied and not self._replacing:
            raise OutputDirError(
                f"{self._shown()} appeared while this run was working (another run?); its contents were left alone"
            )
        if occupied:
            self.check()  # again: files may have been added to the old output meanwhile
            old = t.parent / f".{t.name}.{secrets.token_hex(4)}.old"
            os.rename(t, old)
            try:
                os.rename(tmp, t)
            except OSError as e:
                os.rename(old, t)
                raise OutputDirError(
                    f"{self._shown()} appeared while this run was writing; nothing was replaced"
                ) from e
            _remove_listed(old)
            return
        try:
            os.rename(tmp, t)  # replaces at most an empty directory
        except OSError as e:
            raise OutputDirError(
                f"{self._shown()} appeared while this run was working (another run?); its contents were left alone"
            ) from e


def _write_atomic(path: Path, data: dict) -> None:
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(signum, frame):  # noqa: ARG001 (signal handler signature)
    raise SystemExit(128 + signum)


def _remove_listed(old: Path) -> None:
    """Delete an earlier output: its manifest's files, then its folders; anything else stays, with a warning."""
    manifest = _manifest(old) or {"files": []}
    for rel in sorted(manifest["files"], key=lambda r: -r.count("/")):
        p = old / rel.rstrip("/")
        if rel.endswith("/"):
            try:
                p.rmdir()
            except OSError:
                pass
        elif p.is_file() or p.is_symlink():
            p.unlink()
    (old / MANIFEST).unlink(missing_ok=True)
    try:
        old.rmdir()
    except OSError:
        warnings.warn(f"{old} kept: it holds files the manifest did not list ({_named(_entries(old))})", stacklevel=3)


def record_written(directory: str | Path, *names: str) -> None:
    """Add files the library wrote into one of its outputs afterwards (a model card, metrics) to the
    manifest, so that a later overwrite may replace them. A directory without manifest stays as it is."""
    directory = Path(directory)
    manifest = _manifest(directory)
    if manifest is not None:
        manifest["files"] = sorted(set(manifest["files"]) | {Path(n).as_posix() for n in names})
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


@contextmanager
def output_directory(
    out: str | Path | OutputDir,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    writer: str = "hooked-vivit",
) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``out`` (see the module docstring).
    ``out`` may be an ``OutputDir`` already reserved (checked and locked before the work)."""
    if isinstance(out, OutputDir):
        with out.writing() as tmp:
            yield tmp
        return
    with OutputDir(out, overwrite=overwrite, inputs=inputs, writer=writer) as reserved, reserved.writing() as tmp:
        yield tmp


atomic_directory = output_directory  # the earlier name
