"""Writes that readers never see half done, and folders we may replace.

A file or folder is built under a temporary name beside its target and renamed into place when
complete: checkpoints, the registry, the site, cards, scorecards, reports and every cache
(assets, converted models, parsed text, evaluation data). Written files are readable by others,
since caches, checkpoints and registries are shared.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from zoo.errors import ZooError

# What a user can do about a filesystem failure while writing, by errno.
_ADVICE = {
    errno.ENOSPC: "free some space there or write elsewhere",
    errno.EDQUOT: "free some of the quota or write elsewhere",
    errno.EROFS: "write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder: write elsewhere",
}
# The errno in a message: Python's "[Errno 28]" (shutil.Error lists them) or Rust's "Os { code: 28"
# (safetensors' SafetensorError).
_ERRNO = re.compile(r"\[Errno (\d+)\]|Os \{ code: (\d+)")


def _errno(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    match = _ERRNO.search(str(exc))
    return int(match[1] or match[2]) if match else None


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """Turn a full disk, a read-only filesystem or a path through a file, met while writing
    `target`, into one line that names it and says what to do; other errors pass as they are."""
    try:
        yield
    except ZooError:  # already says what is wrong
        raise
    except Exception as exc:
        code = _errno(exc)
        if code not in _ADVICE:
            raise
        raise ZooError(f"cannot write {target}: {os.strerror(code)}; {_ADVICE[code]}") from exc


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh temporary sibling of `target` to fill; on success it takes `target`'s place (an old
    one is moved aside first and removed last), on any error it is removed and `target` is kept."""
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        recover(target)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-{os.getpid()}-"))
        try:
            yield tmp
            _make_readable(tmp)
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _make_readable(folder: Path) -> None:
    """mkdtemp, NamedTemporaryFile and some writers (safetensors) make private files."""
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def _replace_dir(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-{os.getpid()}-"))
    os.replace(target, old / "previous")
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old / "previous", target)
        old.rmdir()
        raise
    shutil.rmtree(old)


# A staging sibling's name: ".<target>.partial-<pid>-<random>" (being filled) or ".<target>.old-<pid>-<random>"
# (the previous copy set aside); the pid says whether its writer still lives.
_STAGING = re.compile(r"\.(?P<target>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-")


def recover(target: Path) -> None:
    """Undo what a writer killed while replacing `target` left behind. A writer killed between its
    two renames left `target` missing and the previous copy aside: that copy is put back (the new
    one may be incomplete). Then the temporary siblings of dead writers are removed; a folder
    another live process is still filling is left alone."""
    if not target.parent.is_dir():
        return
    abandoned = sorted(
        (match["kind"] != "old", sibling)  # the set-aside copies first, so one can be restored
        for sibling in target.parent.iterdir()
        if (match := _STAGING.match(sibling.name)) and match["target"] == target.name and not _alive(int(match["pid"]))
    )
    for is_partial, sibling in abandoned:
        if not is_partial and not target.exists() and (sibling / "previous").exists():
            os.replace(sibling / "previous", target)
        shutil.rmtree(sibling, ignore_errors=True)


def recover_all(folder: Path) -> None:
    """`recover` every target in `folder` that a writer left temporaries for."""
    for name in {m["target"] for p in folder.iterdir() if (m := _STAGING.match(p.name))}:
        recover(folder / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def write_file(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` fills a hidden temporary file that is then renamed to `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(tmp)
            tmp.chmod(tmp.stat().st_mode | 0o444)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# Kernel interfaces mounted as filesystems: nothing written there is a file a user gets back.
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "configfs", "pstore", "bpf", "mqueue", "fusectl", "binfmt_misc", "efivarfs", "autofs", "hugetlbfs",
})  # fmt: skip


def check_writable(target: Path) -> None:
    """Refuse, before any work, a file or folder `target` that cannot be created (or replaced):
    under a file, on a pseudo-filesystem (/proc, /sys) or a read-only one, or in a folder this
    process may not write into."""
    ancestor = target.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    problem = _unwritable(ancestor)
    if problem:
        raise ZooError(f"cannot write {target}: {ancestor} {problem}")


def _unwritable(folder: Path) -> str | None:
    if not folder.is_dir():
        return "is a file, not a folder"
    kind = filesystem_type(folder)
    if kind in PSEUDO_FILESYSTEMS:
        return f"is on {kind}, a kernel's pseudo-filesystem: write to a folder on a disk"
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return "is on a read-only filesystem: write elsewhere"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable"
    return None


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` lies on, from the mount table ('' when none matches)."""
    where = str(path.resolve())
    mounts = [
        m
        for m in psutil.disk_partitions(all=True)
        if where == m.mountpoint or where.startswith(m.mountpoint.rstrip("/") + "/")
    ]
    return max(mounts, key=lambda m: len(m.mountpoint)).fstype if mounts else ""


def check_replaceable(path: Path, marker: str, what: str) -> None:
    """Refuse to replace `path` unless it is absent, empty, or one of ours (it holds `marker`):
    a typo'd `--out ~` must never delete a home folder."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ZooError(f"{path} exists and is not a directory")
    if any(path.iterdir()) and not (path / marker).is_file():
        raise ZooError(f"refusing to replace {path}: it is not empty and holds no {marker}, so it is not {what}")


def sibling_lock(target: Path) -> Path:
    """The lock of a folder replaced whole (a checkpoint): beside it, as its progress folder is."""
    return target.parent / f".{target.name}.lock"


@contextmanager
def exclusive(lock: Path, what: str) -> Iterator[None]:
    """Hold the OS file lock `lock` while this run writes `what`: released on any exit, and by the
    OS when the process dies, so a crash leaves no stale lock. Another process is refused at once,
    told which run holds it (its pid, host and command, written beside the lock); within this
    process the lock is re-entrant (a nightly run holding its registry publishes into it)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = lock.with_name(lock.name + ".holder")
    file_lock = FileLock(lock, is_singleton=True)
    try:
        file_lock.acquire(timeout=0)
    except Timeout:
        raise ZooError(f"{what} is in use by another run ({_holder(holder)}): wait for it to end, or stop it") from None
    try:
        if file_lock.lock_counter == 1:
            since = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_text(holder, f"pid {os.getpid()} on {socket.gethostname()} since {since}: {shlex.join(sys.argv)}")
        yield
    finally:
        if file_lock.lock_counter == 1:  # gone with the run: removed while still held, so no other run holds it
            holder.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
        file_lock.release()


def _holder(holder: Path) -> str:
    try:
        return holder.read_text(encoding="utf-8").strip()
    except OSError:  # the holder is between taking the lock and saying so
        return "its holder is starting"
