import os
import subprocess
import sys

import pytest

from zoo.files import recover, staged_dir


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failed_fill_keeps_the_old_folder_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "variant"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(target) as tmp:
        (tmp / "weights").write_text("new")
        raise RuntimeError("killed midway")
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variant"]


def test_staging_sweeps_what_a_killed_writer_left_but_not_a_live_writer_s(tmp_path):
    target = tmp_path / "variant"
    abandoned = [tmp_path / f".variant.partial-{_dead_pid()}-abc", tmp_path / f".variant.old-{_dead_pid()}-def"]
    live = tmp_path / f".variant.partial-{os.getpid()}-ghi"
    other = tmp_path / f".other.partial-{_dead_pid()}-jkl"  # another target's staging is not ours to judge
    for folder in [*abandoned, live, other]:
        folder.mkdir()
        (folder / "scorecard.json").write_text("{}")
    with staged_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "variant"])


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from zoo import files

target, step = Path(sys.argv[1]), int(sys.argv[2])
real, renames = os.replace, []

def replace(src, dst):  # SIGKILL right after the step-th rename
    real(src, dst)
    renames.append(dst)
    if len(renames) == step:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
with files.staged_dir(target) as tmp:
    (tmp / "weights").write_text("new")
    if step == 0:  # killed while filling
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(
    "step, survivor",
    [(0, "old"), (1, "old"), (2, "new")],
    ids=["while-filling", "after-moving-the-old-copy-aside", "after-moving-the-new-copy-in"],
)
def test_a_replacement_killed_at_each_step_loses_nothing(tmp_path, step, survivor):
    """Between the two renames the target does not exist; the next reader or writer puts the
    previous copy back instead of deleting both."""
    target = tmp_path / "variant"
    target.mkdir()
    (target / "weights").write_text("old")
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target), str(step)], timeout=60)
    assert killed.returncode == -9
    assert (step == 1) != target.exists()  # the dangerous window really was hit
    recover(target)
    assert (target / "weights").read_text() == survivor
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variant"]
    with staged_dir(target) as tmp:  # and the next replacement works as usual
        (tmp / "weights").write_text("newer")
    assert (target / "weights").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variant"]


def test_files_are_written_readable_by_others(tmp_path):
    with staged_dir(tmp_path / "out") as tmp:
        (tmp / "private").write_text("x")
        (tmp / "private").chmod(0o600)  # as safetensors and mkstemp write them
    assert (tmp_path / "out" / "private").stat().st_mode & 0o044 == 0o044
    assert (tmp_path / "out").stat().st_mode & 0o055 == 0o055
