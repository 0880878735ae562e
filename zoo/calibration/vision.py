"""Image + question pairs for calibrating vision-language models: MathVerse through `datasets`
(the paper: 256 samples), a local folder, and the real photographs scikit-image ships with
questions written here ("skimage-photos", offline).

A local folder holds `questions.jsonl`, one JSON object per line, beside its images:

    {"image": "cat.png", "question": "What animal is this?", "answer": "A cat."}

`image` is a path relative to the folder (or absolute), `answer` is optional; a .jsonl file
may be named directly, its image paths then being relative to the file's folder. Every image
is opened at load time, so a missing or corrupt file fails before any model work is spent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from zoo.calibration.subsets import seeded_pick
from zoo.digest import digest
from zoo.errors import ZooError

log = logging.getLogger(__name__)

QUESTIONS_FILE = "questions.jsonl"
# name -> (Hub dataset id, config, split). MathVerse ships only its testmini split (3,940 items).
HUB_SETS = {"mathverse": ("AI4Math/MathVerse", "testmini", "testmini")}
OFFLINE = "skimage-photos"
PHOTOS_ASSET = "skimage-photos"
# Calibration questions about the photographs that scikit-image ships (skimage/data); the
# evaluation benchmark (zoo.evaluators.vlm) asks about other photographs, never these.
PHOTO_QUESTIONS = {
    "astronaut.png": [
        ("Who is shown in this photo?", "An astronaut in an orange spacesuit, smiling, with her helmet beside her."),
        ("Which flag hangs in the background?", "The flag of the United States."),
        ("What is the model in the top right corner?", "A model of the Space Shuttle."),
        ("What colour is the spacesuit?", "Orange."),
    ],
    "camera.png": [
        ("Describe the photo.", "A man in a dark coat looks through a camera on a tripod in a grassy field."),
        ("Is this photo in colour or in black and white?", "Black and white."),
        ("What is the camera standing on?", "A tripod."),
    ],
    "coffee.png": [
        ("What is in the cup?", "Coffee."),
        ("What colour is the saucer?", "Red."),
        ("What lies on the saucer next to the cup?", "A spoon."),
        ("What is the cup standing on?", "A saucer on a wooden table."),
    ],
    "coins.png": [
        ("What objects are shown?", "Old coins laid out in rows on a dark background."),
        ("How many rows of coins are there?", "Four."),
        ("How many coins are there?", "Twenty-four."),
    ],
    "ihc.png": [
        ("What kind of image is this?", "A microscope image of stained tissue."),
        ("Which two colours dominate the image?", "Brown and blue."),
    ],
    "moon.png": [
        ("What surface is shown?", "The surface of the Moon, with small craters."),
        ("Is the image in colour?", "No, it is greyscale."),
    ],
    "page.png": [
        ("What is the heading of this page?", "Region-based segmentation."),
        ("What kind of document is this?", "A page of printed text about image segmentation."),
    ],
    "rocket.jpg": [
        ("What is shown in the picture?", "A rocket on its launch pad at dusk."),
        ("What stands around the rocket?", "Tall lattice towers."),
        ("Is it day or night?", "Dusk: the sky is dark blue and the pad is lit."),
    ],
    "brick.png": [("What texture is shown?", "Bricks laid in rows, like a brick wall or pavement.")],
    "gravel.png": [("What does this texture show?", "Gravel: many small stones.")],
    "cell.png": [("What is visible in the image?", "A single round cell seen under a microscope.")],
}


@dataclass(frozen=True, eq=False)  # eq=False: images do not compare by value
class VisualQuestion:
    """One calibration sample: an RGB image, a question about it and, when known, its answer."""

    id: str
    image: Image.Image
    question: str
    answer: str | None = None


def open_image(path: Path) -> Image.Image:
    """The image at `path` as RGB, decoded now; a ZooError names the file that cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise ZooError(f"cannot open image {path}: {exc}") from exc


def check_image(path: Path) -> None:
    """Refuse a missing, unreadable or decompression-bomb image from its header, without decoding it."""
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ZooError(f"cannot open image {path}: {exc}") from exc


def skimage_photo(name: str) -> Image.Image:
    """One photograph of scikit-image's data folder (fetched once with pip into the cache)."""
    from zoo.sources.assets import fetch_asset

    return open_image(fetch_asset(PHOTOS_ASSET) / name)


def load_visual_questions(source: str, n: int | None, seed: int = 0, online: bool = True) -> list[VisualQuestion]:
    """`n` pairs of `source` in a seeded order (all when None): a name of HUB_SETS (needs `online`),
    OFFLINE, or a local folder / .jsonl file. The offline set gives all it has when asked for more."""
    if source == OFFLINE:
        return _offline(n, seed)
    path = Path(source).expanduser()
    if path.exists():
        return _local(path, n, seed)
    if source in HUB_SETS and not online:
        raise ZooError(
            f"{source} needs the Hugging Face Hub, which is unreachable from here (HF_HUB_OFFLINE or "
            f"no network); pass a local folder of images with {QUESTIONS_FILE} or {OFFLINE!r}"
        )
    if source in HUB_SETS:
        return _hub(source, n, seed)
    raise ZooError(
        f"unknown image-question set {source!r}: not a folder or .jsonl file, nor one of "
        f"{', '.join([*HUB_SETS, OFFLINE])}"
    )


def visual_fingerprint(items: list[VisualQuestion]) -> str:
    """A digest of the ids, texts and exact pixels, so a checkpoint records what it was calibrated on."""
    return digest(
        part
        for item in items
        for part in (f"{item.id}\0{item.question}\0{item.answer}\0{item.image.size}\0".encode(), item.image.tobytes())
    )


def _offline(n: int | None, seed: int) -> list[VisualQuestion]:
    pairs = {f"{name}#{i}": (name, q, a) for name, qa in PHOTO_QUESTIONS.items() for i, (q, a) in enumerate(qa)}
    chosen = seeded_pick(pairs, n, seed, OFFLINE, at_most=True, what="image-question pairs")
    return [VisualQuestion(key, skimage_photo(pairs[key][0]), pairs[key][1], pairs[key][2]) for key in chosen]


def _local(path: Path, n: int | None, seed: int) -> list[VisualQuestion]:
    file = path / QUESTIONS_FILE if path.is_dir() else path
    if not file.is_file():
        raise ZooError(f"{path} holds no {QUESTIONS_FILE} (one JSON object per line: image, question[, answer])")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ZooError(f"{file} is not UTF-8 text: {exc}") from exc
    records = {}
    for number, line in enumerate(lines, 1):
        if line.strip():
            records[f"{file.name}:{number}"] = _record(file, number, line)
    if not records:
        raise ZooError(f"{file} holds no questions")
    for image, _, _ in records.values():  # every image, not only the picked ones: errors must not depend on n
        check_image(image)
    chosen = seeded_pick(records, n, seed, str(file), what="image-question pairs")
    return [VisualQuestion(key, open_image(records[key][0]), records[key][1], records[key][2]) for key in chosen]


def _record(file: Path, number: int, line: str) -> tuple[Path, str, str | None]:
    """(image path, question, answer) of one line, checked: every question needs an image."""
    where = f"{file} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ZooError(f"{where} is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise ZooError(f"{where} is not a JSON object")
    question, image, answer = record.get("question"), record.get("image"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ZooError(f"{where} has no question")
    if not isinstance(image, str) or not image.strip():
        raise ZooError(f"{where}: question {question!r} has no image")
    path = (file.parent / image).resolve()
    if not path.is_relative_to(file.parent.resolve()):
        raise ZooError(f"{where}: image {image!r} lies outside {file.parent}; images must sit beside {file.name}")
    return path, question, None if answer is None else str(answer)


def _hub(name: str, n: int | None, seed: int) -> list[VisualQuestion]:
    """MathVerse's problems as the model is asked them at evaluation (`query_wo`: the question with
    its answer instruction), with the reference answer."""
    import datasets

    hub_id, config, split = HUB_SETS[name]
    try:
        data = datasets.load_dataset(hub_id, config, split=split)
    except (OSError, ConnectionError, ValueError) as exc:
        raise ZooError(f"cannot load {name} ({hub_id}, {config}/{split}) from the Hub: {exc}") from exc
    row_of = {str(sid): i for i, sid in enumerate(data["sample_index"])}
    items = []
    for sid in seeded_pick(row_of, n, seed, name, what="image-question pairs"):
        row = data[row_of[sid]]
        if row.get("image") is None:
            raise ZooError(f"{name} sample {sid}: question has no image")
        question = row.get("query_wo") or row["question"]
        items.append(VisualQuestion(f"{name}:{sid}", row["image"].convert("RGB"), question, row.get("answer")))
    return items
