import os
import subprocess
import sys

import pytest

from zoo.files import staged_dir


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
