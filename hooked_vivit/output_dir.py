"""Output directories that appear whole or not at all and never take a file the library did not write.

Every directory hooked-vivit writes (``analyze``, ``study``, ``render``, ``save_pretrained``) carries a
manifest, ``.hooked-vivit-manifest.json``, naming each file and folder the library put there, with
each file's size and sha256 taken when it was written. Then:

- a new or empty target is filled; a target holding anything its manifest does not list is refused,
  naming those files, with or without ``overwrite`` (``--out .`` or a folder of clips is never emptied);
  so is one holding a listed file whose size or hash differs from the recorded one (changed since, so
  the user's now), and one whose manifest records no hashes (an older hooked-vivit's);
- an earlier hooked-vivit output is replaced only with ``overwrite``, and only its listed files are
  deleted (never ``rmtree``): each one found inside the old folder (no ``..``, absolute path or
  symlink leads out of it), still of its recorded size and hash, and not one of the run's inputs;
  anything else stays, with a warning. A target that is, or holds, one of the run's inputs (for
  ``extract`` and ``study``: every clip its list names), or the current directory, is refused;
  so is a target below a file (``--out file.txt/sub``);
- the checks and a lock (``.NAME.lock`` beside the target, a ``filelock.FileLock``: flock(2) on Unix,
  so it is free again the moment its process ends, however it ended; the file holds the pid, for the
  message, and goes with the run) come
  before the work, so a second run into the same directory is refused at once; the final rename
  fails if the target appeared meanwhile (rename(2) never replaces a non-empty directory);
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
the folder gets its manifest (which records the settings too) and is renamed to the target exactly as
``writing()`` does; the settings file goes only once the manifest is whole, and comes back if the
rename fails, so a failed last step leaves a folder the same command resumes. A folder whose settings
were lost (a crash between those steps, or an older hooked-vivit's failed last write) is refused
without ``overwrite`` and discarded with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

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
    if not (isinstance(data, dict) and isinstance(data.get("files"), list)):
        return None
    data["files"] = [f for f in data["files"] if isinstance(f, str)]
    return data


def _temporary(name: str, of: str) -> bool:
    """``name`` is a temporary file _write_atomic makes for ``of`` (left behind only by a crash)."""
    return re.fullmatch(rf"\.{re.escape(of)}\.[0-9a-f]+\.tmp", name) is not None


def _sha256(fd: int) -> str:
    h = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _record(directory: Path, rel: str) -> dict | None:
    """What the manifest records of the file ``rel`` the library just wrote: its size and sha256 (a
    symlink: its target); None for a folder."""
    path = directory / rel
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return {"symlink": os.readlink(path)}
    if not stat.S_ISREG(st.st_mode):
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        return {"size": os.fstat(fd).st_size, "sha256": _sha256(fd)}
    finally:
        os.close(fd)


def _write_manifest(directory: Path, writer: str, **extra) -> None:
    """The manifest of everything in ``directory`` (written whole or not at all)."""
    files = [
        e
        for e in _entries(directory)
        if e not in (MANIFEST, RESUME_STATE) and not _temporary(e, MANIFEST) and not _temporary(e, RESUME_STATE)
    ]
    content = {e: r for e in files if not e.endswith("/") and (r := _record(directory, e)) is not None}
    _write_atomic(directory / MANIFEST, {"written_by": writer, "files": files, "content": content, **extra})


def _within(rel: str) -> bool:
    """A manifest name that stays inside its folder: relative, no '..'."""
    parts = rel.rstrip("/").split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts and "" not in parts


def _verified(directory: Path, rel: str, record: object, digests: dict) -> Path | None:
    """The path of ``rel`` in ``directory`` if it is still what the library wrote there: reached
    without a symlink leading out of ``directory``, a regular file of the recorded size and sha256
    (or the recorded symlink); else None. ``digests`` caches hashes by (device, inode, size, times)."""
    if not isinstance(record, dict) or not _within(rel) or rel.endswith("/"):
        return None
    base = Path(os.path.realpath(directory))
    path = Path(os.path.realpath((directory / rel).parent)) / Path(rel).name
    if not _inside(path, base) or path == base:
        return None
    try:
        st = os.lstat(path)
        if "symlink" in record:
            return path if stat.S_ISLNK(st.st_mode) and os.readlink(path) == record["symlink"] else None
        if not stat.S_ISREG(st.st_mode) or st.st_size != record.get("size"):
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in digests:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                digests[key] = _sha256(fd)
            finally:
                os.close(fd)
    except OSError:
        return None
    return path if digests[key] == record.get("sha256") else None


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
        self._file_lock: FileLock | None = None
        self._lock_stat: os.stat_result | None = None  # the lock file this run holds
        self._digests: dict = {}  # sha256 of files already read, by (device, inode, size, times)
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
        blocker = next((p for p in t.parents if os.path.lexists(p)), None)  # the nearest existing folder above
        if blocker is not None and not blocker.is_dir():
            raise OutputDirError(
                f"--out {self.path}: {blocker} is a file, not a folder, so no directory can be made below it; "
                "choose another output directory"
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
        # A manifest that cannot be read is no manifest: the file is named like any other.
        foreign = [e for e in entries if (e != MANIFEST or manifest is None) and e not in listed]
        # A foreign folder is named once, not with everything inside it.
        foreign = [e for e in foreign if not any(e != f and e.startswith(f) for f in foreign if f.endswith("/"))]
        if foreign:
            raise OutputDirError(
                f"{shown} holds {len(foreign)} file(s) hooked-vivit did not write ({_named(foreign)}); such a directory is "
                "never emptied or overwritten: choose a new or empty directory"
            )
        writer = manifest.get("written_by", "hooked-vivit")
        content = manifest.get("content")
        if not isinstance(content, dict):
            raise OutputDirError(
                f"{shown} holds an earlier output of {writer} whose manifest records no size and hash of its files "
                "(an older hooked-vivit wrote it), so files changed since cannot be told apart; it is never emptied: "
                "delete it yourself or choose another directory"
            )
        if not self.overwrite:
            raise OutputDirError(
                f"{shown} holds an earlier output of {writer}; pass --overwrite "
                "(overwrite=True) to replace it, or choose another directory"
            )
        changed = [
            e
            for e in entries
            if e in listed and not e.endswith("/") and not _verified(t, e, content.get(e), self._digests)
        ]
        if changed:
            raise OutputDirError(
                f"{shown} holds {len(changed)} file(s) changed since hooked-vivit wrote them ({_named(changed)}); "
                "they are yours now and the directory is never emptied or overwritten: move them away or choose "
                "another directory"
            )
        return True

    # ------------------------------------------------------------------ lock and signals
    def _take_lock(self) -> None:
        """``.NAME.lock``, a FileLock: held while this run lives, released by the kernel when its process
        ends (also by SIGKILL), so a leftover file, whatever it holds, is free; one held now is not."""
        lock = self.target.parent / f".{self.target.name}.lock"
        self.target.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            held: list[os.stat_result] = []

            def own(fd: int) -> None:  # FileLock's descriptor, just locked
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())  # for the message a second run shows
                held.append(os.fstat(fd))

            file_lock = FileLock(lock, blocking=False, thread_local=False, on_acquired=own)
            try:
                file_lock.acquire()
            except Timeout:
                if not os.path.lexists(lock):  # the run that held it has just finished and removed it: again
                    continue
                try:
                    text = lock.read_bytes()[:64].decode(errors="replace").split()
                except OSError:
                    text = []
                pid = f" (pid {text[0]})" if text and text[0].isdigit() else ""  # none yet: its owner is starting
                raise OutputDirError(
                    f"another hooked-vivit run{pid} is writing {self._shown()} (lock {lock}); "
                    "wait for it to finish or choose another directory"
                ) from None
            self._lock, self._file_lock, self._lock_stat = lock, file_lock, held[0]
            return
        raise OutputDirError(f"could not take the lock {lock} (other runs keep taking it); try again")

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
        if self._file_lock is not None:
            try:
                # Windows: an open file cannot be removed (FileLock removes it after the release there).
                if _same_file(self._lock_stat, self._lock) and os.name != "nt":
                    self._lock.unlink()  # before the lock is released: nobody else holds this file
            finally:
                self._file_lock.release()
                self._lock, self._file_lock, self._lock_stat = None, None, None

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
            _write_manifest(tmp, self.writer)
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
        state = {"written_by": self.writer, "settings": settings}
        if folder.is_dir():
            entries = _entries(folder)
            mine = (RESUME_STATE, MANIFEST)  # the settings, and the manifest of a last step that failed
            foreign = [e for e in entries if e not in mine and not any(_temporary(e, m) for m in mine) and not owned(e)]
            if foreign:
                raise OutputDirError(
                    f"{folder} (an unfinished run's folder) holds file(s) hooked-vivit did not write "
                    f"({_named(foreign)}); it is left alone: move them away or choose another output directory"
                )
            old = _resume_settings(folder)
            if old != settings:
                if not self.overwrite:
                    if old is None:
                        raise OutputDirError(
                            f"{self._shown()}: an unfinished run whose settings were not recorded (its last step failed) "
                            f"is in {folder}; pass --overwrite (overwrite=True) to discard its pieces, or choose another "
                            "output directory"
                        )
                    differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                    raise OutputDirError(
                        f"{self._shown()}: an unfinished run with other settings (differing in {_named(differ)}) is in {folder}; "
                        "rerun with its settings to finish it, or pass --overwrite (overwrite=True) to discard its pieces"
                    )
                for e in sorted(entries, key=lambda r: -r.rstrip("/").count("/")):
                    p = folder / e.rstrip("/")
                    p.rmdir() if e.endswith("/") else p.unlink()  # all the run's own (checked above)
                _write_atomic(folder / RESUME_STATE, state)
            else:  # the same run: continue, back from a failed last step if that is where it stopped
                _write_atomic(folder / RESUME_STATE, state)
                for e in entries:
                    if e == MANIFEST or any(_temporary(e, m) for m in mine):
                        (folder / e).unlink()
        else:
            os.mkdir(folder)
            _write_atomic(folder / RESUME_STATE, state)
        yield folder
        try:
            # The manifest (with the settings) is whole before the settings file goes: at every moment
            # one of them says what the folder is.
            _write_manifest(folder, self.writer, settings=settings)
            (folder / RESUME_STATE).unlink()
            self._commit(folder)
        except BaseException:
            # Back to a resumable folder: the pieces stay for the next run.
            try:
                _write_atomic(folder / RESUME_STATE, state)
                (folder / MANIFEST).unlink(missing_ok=True)
            except OSError:
                pass  # the manifest, if whole, still records the settings
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
            # Inputs are refused by check(); never removed even so (their paths, now under ``old``).
            keep = [old / inp.relative_to(t) for inp in self.inputs if _inside(inp, t)]
            _remove_listed(old, keep=keep, digests=self._digests, shown=self._shown())
            return
        try:
            os.rename(tmp, t)  # replaces at most an empty directory
        except OSError as e:
            raise OutputDirError(
                f"{self._shown()} appeared while this run was working (another run?); its contents were left alone"
            ) from e


def _write_atomic(path: Path, data: dict) -> None:
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _resume_settings(folder: Path) -> dict | None:
    """The settings a resume folder's run recorded: in its settings file, or, if its last step got that
    far, in its manifest; None if neither says."""
    for name in (RESUME_STATE, MANIFEST):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("settings"), dict):
            return data["settings"]
    return None


def _same_file(own: os.stat_result, path: Path) -> bool:
    """``path`` is still the file ``own`` describes."""
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), own)
    except OSError:
        return False


def _terminate(signum, frame):  # noqa: ARG001 (signal handler signature)
    raise SystemExit(128 + signum)


def _remove_listed(old: Path, *, keep: Iterable[Path] = (), digests: dict | None = None, shown: str = "") -> None:
    """Delete an earlier output (renamed to ``old``): of what is in it, the files its manifest lists that
    are still as recorded (size and sha256, reached without leaving ``old``), then its empty listed
    folders. A name leading out of ``old``, a changed or unrecorded file, and anything at or under a
    ``keep`` path (the run's inputs) stay, with a warning."""
    manifest = _manifest(old) or {"files": []}
    content = manifest.get("content") if isinstance(manifest.get("content"), dict) else {}
    listed = set(manifest["files"])
    keep = [Path(os.path.realpath(k)) for k in keep]
    digests = {} if digests is None else digests
    outside = [f for f in manifest["files"] if not _within(f)]
    if outside:
        warnings.warn(
            f"the earlier output {shown or old}: its manifest names {len(outside)} path(s) outside it "
            f"({_named(outside)}); left alone",
            stacklevel=3,
        )
    for rel in sorted(_entries(old), key=lambda r: -r.rstrip("/").count("/")):  # what is there, links not followed
        path = Path(os.path.realpath((old / rel.rstrip("/")).parent)) / Path(rel.rstrip("/")).name
        if rel not in listed or any(_inside(path, k) or _inside(k, path) for k in keep):
            continue
        if rel.endswith("/"):
            if _inside(path, Path(os.path.realpath(old))):
                try:
                    path.rmdir()  # only an empty one
                except OSError:
                    pass
        elif (verified := _verified(old, rel, content.get(rel), digests)) is not None:
            verified.unlink()
    if _manifest(old) is not None:
        (old / MANIFEST).unlink()
    try:
        old.rmdir()
    except OSError:
        warnings.warn(
            f"{old} kept: it holds files hooked-vivit did not write, changed since, or inputs ({_named(_entries(old))})",
            stacklevel=3,
        )


def record_written(directory: str | Path, *names: str) -> None:
    """Add files the library wrote into one of its outputs afterwards (a model card, metrics) to the
    manifest, with their size and sha256 now, so that a later overwrite may replace them (call it again
    after rewriting one; a name that is not a file there is skipped). A directory without manifest
    stays as it is."""
    directory = Path(directory)
    manifest = _manifest(directory)
    if manifest is None:
        return
    rels = [Path(n).as_posix() for n in names]
    outside = [r for r in rels if not _within(r)]
    if outside:
        raise ValueError(f"record_written: {_named(outside)} is not a name inside {directory}")
    rels = [r for r in rels if (directory / r).is_file() and not (directory / r).is_symlink()]  # written: recorded
    manifest["files"] = sorted(set(manifest["files"]) | set(rels))
    if isinstance(manifest.get("content"), dict):  # an older manifest without hashes stays one
        manifest["content"].update({r: _record(directory, r) for r in rels})
    _write_atomic(directory / MANIFEST, manifest)


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
