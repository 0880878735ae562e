"""Vision-language benchmarks with VLMEvalKit (`vlmeval`), driving the in-memory model.

The model is wrapped as a VLMEvalKit `BaseModel`, VLMEvalKit builds each benchmark by name from
its data folder (`$LMUData`, else the zoo cache's LMUData/), runs inference and scores it: multiple
choice by exact matching (its `exact_matching` policy, no paid judge), OCRBench by its own rule.
Pre-placed official TSVs (MMMU_DEV_VAL, OCRBench, RealWorldQA, MMStar) work offline; offline, a
small multiple-choice benchmark about real photographs that scikit-image ships ("ZooPhotosMCQ",
questions written here) is generated in VLMEvalKit's TSV format into the same folder.

VLMEvalKit imports torchvision, decord and OpenCV at module level for video benchmarks and other
models' wrappers, never on the image benchmarks' path. Where they are missing (PyPI's torchvision
cannot load beside the CPU torch wheel), they are served as stand-ins that fail when used, only
while `vlmeval` is imported, and then removed again, so transformers never sees them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import math
import os
import ssl
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from transformers.utils import is_torchvision_available
from transformers.utils import logging as hf_logging

from zoo.calibration.vision import open_image, skimage_photo
from zoo.errors import ZooError
from zoo.evaluators.scores import Score, Scores
from zoo.files import write_text
from zoo.sources.assets import cache_dir

log = logging.getLogger(__name__)

UNUSED_MODULES = ("torchvision", "decord", "cv2")  # imported by vlmeval, used only off our path
LOCAL_BENCHMARK = "ZooPhotosMCQ"
# benchmark -> the split its published score is reported on; other rows are not run
SCORED_SPLITS = {"MMMU_DEV_VAL": "validation"}
# Multiple-choice questions about scikit-image photographs that calibration never shows.
PHOTO_MCQ = [
    ("chelsea.png", "What animal is in the photo?", ["a dog", "a cat", "a horse", "a rabbit"], "B"),
    ("chelsea.png", "What colour are the animal's eyes?", ["blue", "brown", "yellow-green", "red"], "C"),
    (
        "hubble_deep_field.jpg",
        "What does this image show?",
        ["many distant galaxies", "a city at night", "a field of flowers", "stained tissue"],
        "A",
    ),
    ("hubble_deep_field.jpg", "What colour is most of the background?", ["white", "green", "yellow", "black"], "D"),
    ("motorcycle_left.png", "What vehicle is shown?", ["a bicycle", "a car", "a motorcycle", "a truck"], "C"),
    ("motorcycle_left.png", "What colour is its fuel tank?", ["red", "blue", "green", "yellow"], "A"),
    (
        "motorcycle_left.png",
        "Where is it parked?",
        ["on a beach", "indoors, in a garage or workshop", "on a highway", "in a forest"],
        "B",
    ),
    (
        "retina.jpg",
        "What does this image show?",
        ["the surface of Mars", "a slice of orange", "a sunset", "the retina at the back of an eye"],
        "D",
    ),
    ("retina.jpg", "What is the dominant colour?", ["orange-red", "green", "blue", "purple"], "A"),
    (
        "text.png",
        "What is written on the surface?",
        ["a printed newspaper", "handwritten mathematical formulas", "a street sign", "nothing"],
        "B",
    ),
    ("grass.png", "What texture is shown?", ["water", "sand", "grass", "clouds"], "C"),
    (
        "clock_motion.png",
        "Why is the object in the middle hard to make out?",
        ["it is blurred by motion", "it is behind bars", "it is covered by text", "it is cut off at the edge"],
        "A",
    ),
    ("horse.png", "What animal does the silhouette show?", ["a dog", "a horse", "a cat", "a bird"], "B"),
]


class _Unavailable(types.ModuleType):
    """A missing module, or anything reached through it: fine to import and name, fails when used."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self.__name__}.{attr}")

    def __call__(self, *args, **kwargs):
        raise ZooError(f"{self.__name__} is not installed: the VLMEvalKit feature that needs it is unavailable")

    def __mro_entries__(self, bases):
        return (object,)


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Unavailable(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


@functools.cache
def import_vlmeval() -> types.ModuleType:
    """`vlmeval`, imported with stand-ins for UNUSED_MODULES that are not installed. vlmeval turns
    off TLS certificate checks and autograd for the whole process on import; both are undone here."""
    is_torchvision_available()  # transformers caches the real answer before any stand-in exists
    missing = {name for name in UNUSED_MODULES if importlib.util.find_spec(name) is None}
    stand_ins = _StandIns(missing)
    https_context, grad = ssl._create_default_https_context, torch.is_grad_enabled()
    sys.meta_path.insert(0, stand_ins)
    try:
        import vlmeval
    except ImportError as exc:
        raise ZooError(f"VLMEvalKit is not installed ({exc}); see the `vision` extra of pyproject.toml") from exc
    finally:
        sys.meta_path.remove(stand_ins)
        for name in [n for n in sys.modules if n.split(".")[0] in missing]:
            del sys.modules[name]
        ssl._create_default_https_context = https_context
        torch.set_grad_enabled(grad)
    return vlmeval


@functools.cache
def _model_class() -> type:
    from vlmeval.vlm.base import BaseModel

    class ZooVLM(BaseModel):
        """An in-memory transformers model behind VLMEvalKit's model interface: interleaved
        images and texts in, a greedy answer out."""

        INTERLEAVE = True
        allowed_types = ["text", "image"]

        def __init__(self, model, processor, to_inputs: Callable[[list], dict], max_new_tokens: int) -> None:
            super().__init__()
            self.model, self.processor = model, processor
            self.to_inputs, self.max_new_tokens = to_inputs, max_new_tokens

        def generate_inner(self, message, dataset=None) -> str:
            content = [m["value"] if m["type"] == "text" else open_image(Path(m["value"])) for m in message]
            inputs = {k: _to_model(v, self.model) for k, v in self.to_inputs(content).items()}
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # sampling defaults of the generation config, overridden here
            try:
                with torch.inference_mode():
                    ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            finally:
                hf_logging.set_verbosity(verbosity)
            new = ids[:, inputs["input_ids"].shape[1] :]
            return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

    return ZooVLM


def _to_model(value, model):
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(model.device, model.dtype) if value.is_floating_point() else value.to(model.device)


def lmu_root() -> Path:
    """VLMEvalKit's data folder: $LMUData when set, else LMUData/ in the zoo cache."""
    return Path(os.environ.get("LMUData") or cache_dir() / "LMUData")


@contextlib.contextmanager
def _lmu_data(root: Path) -> Iterator[None]:
    """VLMEvalKit reads its data folder from $LMUData on every call; set it for the evaluation only."""
    root.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("LMUData")
    os.environ["LMUData"] = str(root)
    try:
        yield
    finally:
        if before is None:
            del os.environ["LMUData"]
        else:
            os.environ["LMUData"] = before


def build_photo_benchmark(root: Path) -> Path:
    """ZooPhotosMCQ.tsv in VLMEvalKit's multiple-choice layout (index, base64 image, question,
    A-D, answer, category), rewritten only when its content changes; VLMEvalKit's decoded-image
    cache for it is cleared then, as it is keyed by row index alone."""
    import pandas as pd
    from vlmeval.smp import encode_image_to_base64

    rows = []
    for i, (photo, question, options, answer) in enumerate(PHOTO_MCQ):
        rows.append(
            {
                "index": i,
                "image": encode_image_to_base64(skimage_photo(photo)),
                "question": question,
                **dict(zip("ABCD", options, strict=True)),
                "answer": answer,
                "category": Path(photo).stem,
            }
        )
    text = pd.DataFrame(rows).to_csv(sep="\t", index=False)
    path = root / f"{LOCAL_BENCHMARK}.tsv"
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
        images = root / "images" / LOCAL_BENCHMARK
        for old in images.glob("*") if images.is_dir() else []:
            old.unlink()
    return path


def _build(name: str, root: Path):
    from vlmeval.dataset import build_dataset

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not officially supported.*")
        warnings.filterwarnings("ignore", message=".*as a Custom MCQ dataset.*")
        try:
            dataset = build_dataset(name)
        except Exception as exc:  # VLMEvalKit raises bare Exceptions for failed downloads
            raise ZooError(
                f"VLMEvalKit could not build {name}: {exc}. Offline, place its official {name}.tsv in {root} ($LMUData)"
            ) from exc
    if dataset is None:
        raise ZooError(f"VLMEvalKit knows no benchmark {name!r} and {root / (name + '.tsv')} does not exist")
    return dataset


def _subset(dataset, name: str, limit: int | None) -> None:
    """Keep the scored split and, with `limit`, at most that many rows spread over the benchmark."""
    data = dataset.data
    if name in SCORED_SPLITS and "split" in data:
        data = data[data["split"] == SCORED_SPLITS[name]]
    if limit is not None:
        data = data.iloc[:: max(1, math.ceil(len(data) / limit))]
    dataset.data = data.reset_index(drop=True)


def _accuracy(name: str, result) -> float:
    """Fraction correct from VLMEvalKit's result: OCRBench's score dict or an accuracy table."""
    if isinstance(result, dict):
        final = result["Final Score"]
        return final["sum"] / final["count"]
    if len(result) != 1:
        raise ZooError(f"{name}: VLMEvalKit reported {len(result)} splits ({list(result['split'])}), expected one")
    return float(result["Overall"].iloc[0])


def evaluate_vlm(
    model,
    processor,
    to_inputs: Callable[[list], dict],
    benchmarks: Sequence[str],
    limit: int | None = None,
    max_new_tokens: int = 32,
) -> Scores:
    """{"vlmeval/<benchmark>": {"accuracy": fraction}} for each benchmark, the model as it is now.

    `to_inputs` turns interleaved content (texts, PIL images) into model inputs: the model's
    chat template and processor. `limit` caps the items per benchmark.
    """
    from vlmeval.inference import infer_data_job

    root = lmu_root()
    wrapper = _model_class()(model, processor, to_inputs, max_new_tokens)
    metrics = {}
    with _lmu_data(root):
        if LOCAL_BENCHMARK in benchmarks:
            build_photo_benchmark(root)
        for name in benchmarks:
            dataset = _build(name, root)
            _subset(dataset, name, limit)
            with tempfile.TemporaryDirectory(prefix="zoo-vlmeval-") as work:
                infer_data_job(wrapper, work_dir=work, model_name="zoo", dataset=dataset)
                result = dataset.evaluate(str(Path(work) / f"zoo_{name}.xlsx"), model="exact_matching", nproc=1)
            accuracy = _accuracy(name, result)
            metrics[f"vlmeval/{name}"] = {"accuracy": Score(value=accuracy)}
            log.info("%s: accuracy %.4f over %d items", name, accuracy, len(dataset.data))
    return metrics


import_vlmeval()  # at import: every `from vlmeval... import` above runs after the stand-ins were served
