"""Writes that readers never see half done: a file or folder is built under a temporary name
beside its target and renamed into place when complete. Torch-free, so cards, scorecards, the
site and the registry use it cheaply."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh temporary sibling of `target` to fill; on success it takes `target`'s place (an old
    one is moved aside first and removed last), on any error it is removed and `target` is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_abandoned(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-{os.getpid()}-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; checkpoints, registries and sites are shared
        yield tmp
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def _sweep_abandoned(target: Path) -> None:
    """Remove the temporary siblings a killed process left behind; each name carries its writer's
    pid, so a folder another live process is still filling is left alone."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:partial|old)-(\d+)-")
    for sibling in target.parent.iterdir():
        match = pattern.match(sibling.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


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
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
