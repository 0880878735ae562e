"""Image + question sets: the local folder layout, MathVerse's fields through `datasets`, the
offline photographs, and the errors a user sees for a bad file."""

import json

import pytest
from PIL import Image

from tests.tiny_vlm import photo
from zoo.calibration import vision
from zoo.calibration.vision import OFFLINE, PHOTO_QUESTIONS, load_visual_questions, visual_fingerprint
from zoo.errors import ZooError


def _write(folder, records):
    (folder / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_local_folder_and_jsonl_file(tmp_path):
    photo(0).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    photo(1).convert("L").save(tmp_path / "sub" / "b.jpg")
    _write(
        tmp_path,
        [{"image": "a.png", "question": "what is it", "answer": 3}, {"image": "sub/b.jpg", "question": "and this"}],
    )
    items = load_visual_questions(str(tmp_path), None)
    assert [(i.id, i.question, i.answer) for i in items] == [
        ("questions.jsonl:1", "what is it", "3"),
        ("questions.jsonl:2", "and this", None),
    ]
    assert all(i.image.mode == "RGB" for i in items)
    same = load_visual_questions(str(tmp_path / "questions.jsonl"), None)
    assert visual_fingerprint(same) == visual_fingerprint(items)
    assert len(load_visual_questions(str(tmp_path), 1, seed=0)) == 1


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 1 is not JSON"),
        ('["a list"]', "line 1 is not a JSON object"),
        ('{"image": "a.png"}', "line 1 has no question"),
        ('{"question": "where is the picture", "image": ""}', "question 'where is the picture' has no image"),
    ],
)
def test_bad_lines_are_named(tmp_path, line, message):
    (tmp_path / "questions.jsonl").write_text(line + "\n")
    with pytest.raises(ZooError, match=message):
        load_visual_questions(str(tmp_path), None)


def test_missing_or_corrupt_images_name_the_file(tmp_path):
    _write(tmp_path, [{"image": "gone.png", "question": "q"}])
    with pytest.raises(ZooError, match=r"cannot open image .*gone\.png"):
        load_visual_questions(str(tmp_path), None)
    (tmp_path / "half.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    _write(tmp_path, [{"image": "half.png", "question": "q"}])
    with pytest.raises(ZooError, match=r"cannot open image .*half\.png"):
        load_visual_questions(str(tmp_path), None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="holds no questions.jsonl"):
        load_visual_questions(str(tmp_path / "empty"), None)
    with pytest.raises(ZooError, match="unknown image-question set 'nope'"):
        load_visual_questions("nope", 1)


def test_mathverse_fields_through_datasets(monkeypatch):
    """The Hub path on a stand-in with MathVerse's columns: the evaluation prompt (query_wo) is the
    question, the reference answer follows; rows are picked by sample_index."""
    import datasets

    rows = {
        "sample_index": ["1", "2", "3"],
        "problem_version": ["Text Lite"] * 3,
        "question": ["As shown, find x.", "Find y.", "Find z."],
        "query_wo": ["Please answer.\nQuestion: As shown, find x.", "", "Please answer.\nQuestion: Find z."],
        "answer": ["A", "5", "C"],
        "image": [photo(i) for i in range(3)],
    }
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    items = load_visual_questions("mathverse", None)
    assert calls == [(("AI4Math/MathVerse", "testmini"), {"split": "testmini"})]
    assert [(i.id, i.question, i.answer) for i in items] == [
        ("mathverse:1", "Please answer.\nQuestion: As shown, find x.", "A"),
        ("mathverse:2", "Find y.", "5"),  # no query_wo: the bare question
        ("mathverse:3", "Please answer.\nQuestion: Find z.", "C"),
    ]
    assert isinstance(items[0].image, Image.Image) and items[0].image.mode == "RGB"
    with pytest.raises(ZooError, match="mathverse has 3 image-question pairs, fewer than the 4 requested"):
        load_visual_questions("mathverse", 4)


def test_offline_photographs_load_with_their_questions():
    items = load_visual_questions(OFFLINE, 3, seed=0)
    assert len(items) == 3 and all(i.image.size[0] > 100 for i in items)
    total = sum(len(qa) for qa in PHOTO_QUESTIONS.values())
    assert len(load_visual_questions(OFFLINE, 10_000)) == total  # the offline stand-in gives what it has
    assert vision.skimage_photo("astronaut.png").size == (512, 512)
