"""Crash-safe file operations: a file is either absent or complete, a folder is the previous one or the new one.

POSIX rename within a directory is atomic, but only durable once the file and
the directory entry are fsynced; these helpers do both so a SIGKILL or power
loss never leaves a half-written manifest, index or shard under its real name.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from emoctl.errors import ConfigError


def check_output_dir(path: str | Path, key: str = "out_dir") -> Path:
    """Refuse, before any work, an output folder that cannot be written: a file where it or a parent should be,
    or a folder this user may not write (the folder itself or its nearest existing parent). Creates nothing."""

    target = Path(path)
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={path}: {probe} is a file, not a folder, so the outputs cannot go there; choose "
                          f"another {key} or move the file away.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: this user may not write in {probe}; choose a writable {key}.")
    return target


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside ``path`` durable."""
    _fsync(path)


def _fsync(path: Path) -> None:
    """fsync a file's contents or a folder's entries."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that is unique to this process and ends in ``.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (the caller renames it into place)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, fsync the directory."""
    tmp = temp_name(path)
    write_durably(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def create_once(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists; atomic against concurrent creators.

    Returns True if this call created it.  A hard link fails if the target
    exists, so two ranks racing to create the same file agree on one winner.
    """
    tmp = temp_name(path)
    write_durably(tmp, data)
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    except OSError:  # file systems without hard links: best effort
        created = not path.exists()
        if created:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return created


def remove_dead_temps(path: Path) -> None:
    """Delete ``temp_name(path)`` files left by processes of this host that no longer run.

    A temp file of a live process (another rank consolidating right now) is left alone.
    """
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def staging_name(target: Path) -> Path:
    """The hidden sibling of ``target`` that :func:`atomic_folder` builds in (this process's, ends in ``.partial``)."""
    return target.with_name(f".{target.name}.{os.getpid()}.partial")


def _previous_name(target: Path) -> Path:
    """Where :func:`atomic_folder` parks the previous ``target`` during the swap (ends in ``.old``)."""
    return target.with_name(f".{target.name}.{os.getpid()}.old")


def remove_dead_staging(target: Path) -> None:
    """Clean what :func:`atomic_folder` calls of dead processes (of this host) left beside ``target``.

    A staging folder (``.partial``) of a dead process is deleted. A parked previous folder (``.old``) of a dead
    process is put back under ``target``'s name when ``target`` is missing (the process died between the two
    renames of the swap), else deleted. Folders of live processes are left alone."""
    for suffix in (".partial", ".old"):
        for leftover in sorted(target.parent.glob(f".{target.name}.*{suffix}")):
            pid = leftover.name[len(target.name) + 2:-len(suffix)]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if suffix == ".old" and not target.exists():
                os.replace(leftover, target)
                fsync_dir(target.parent)
            else:
                shutil.rmtree(leftover, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (``root`` included), so a rename of ``root`` publishes data."""
    for folder, _, files in os.walk(root):
        for name in files:
            if not (Path(folder) / name).is_symlink():
                _fsync(Path(folder) / name)
        fsync_dir(Path(folder))


@contextmanager
def atomic_folder(target: str | Path, create: bool = True) -> Iterator[Path]:
    """Write a folder so that ``target`` is always either the previous folder, whole, or the new one, whole.

    Yields a staging folder, a hidden sibling of ``target`` (created and empty, or not yet created with
    ``create=False``, for writers that create it themselves), in which the caller writes every file. When the
    block ends normally, every file is fsynced, the previous ``target`` (if any) is renamed aside, the staging
    folder renamed to ``target``, the parent fsynced and the previous folder deleted. When the block raises, the
    staging folder is deleted and ``target`` is untouched. Staging folders that dead processes left beside
    ``target`` are cleaned first (:func:`remove_dead_staging`), so a SIGKILL leaves nothing that outlives the
    next export. Writers may nest: a writer called on another one's staging folder swaps it the same way."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(target)
    staging, previous = staging_name(target), _previous_name(target)
    for stale in (staging, previous):  # this pid's own, from an earlier call that did not finish
        if stale.exists():
            shutil.rmtree(stale)
    if create:
        staging.mkdir()
    try:
        yield staging
        fsync_tree(staging)
        if target.exists():
            os.rename(target, previous)
        os.rename(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if previous.exists() and not target.exists():
            os.rename(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def save_figure_atomically(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG under a temporary name, then rename; the figure is closed either way."""
    import matplotlib.pyplot as plt

    tmp = temp_name(path)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


class ExclusiveLock:
    """An exclusive ``flock`` on a lock file, with its owner (pid, host, command, start time) written inside.

    The OS drops the lock when its process dies, however it dies, so a lock file left by a killed process is
    never mistaken for a live owner: whoever can take the lock knows no live process holds it. The owner's line
    is only for the refusal a second process gets. Released, the file is removed; a process that opened it just
    before that checks, once it holds the lock, that the path still names the file it locked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = None

    @classmethod
    def beside(cls, target: str | Path) -> ExclusiveLock:
        """The lock of whatever is written at ``target``: ``.<name>.lock`` in its folder (outside ``target`` itself,
        so renaming a finished build into place does not move the lock)."""
        target = Path(target).absolute()
        return cls(target.with_name(f".{target.name}.lock"))

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; False (blocking=False) when another process holds it."""
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                f.close()
                return False
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()  # its owner removed it as we waited: lock the file that is there now
        f.seek(0)
        f.truncate()
        f.write(_owner_line())
        f.flush()
        self._file = f
        return True

    def owner(self) -> str:
        """Who holds the lock, as its owner wrote it (or "another process" when it has not written yet)."""
        try:
            said = self.path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            said = ""
        return said or "another process"

    def release(self) -> None:
        if self._file is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> "ExclusiveLock":
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _owner_line() -> str:
    import socket
    import sys
    from datetime import datetime, timezone

    command = " ".join(sys.argv[:1] and [Path(sys.argv[0]).name, *sys.argv[1:]])
    if len(command) > 160:
        command = command[:157] + "..."
    since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"pid {os.getpid()} on {socket.gethostname()} (`{command}`), since {since}"
