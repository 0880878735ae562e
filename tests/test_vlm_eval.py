"""VLMEvalKit driving the in-memory model: the local photo benchmark in VLMEvalKit's TSV format,
exact-matching scores, and a scorecard for a tiny Qwen2-VL before and after compression."""

import importlib.util
import ssl
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vlmeval") is None, reason="VLMEvalKit (vlmeval) is not installed: the `vision` extra"
)


@pytest.fixture()
def lmu(tmp_path, monkeypatch):
    monkeypatch.setenv("LMUData", str(tmp_path / "LMUData"))
    return tmp_path / "LMUData"


def test_import_leaves_no_stand_ins_and_keeps_tls_checks():
    from transformers.utils import is_torchvision_available

    from zoo.evaluators import vlm

    assert vlm.import_vlmeval().__name__ == "vlmeval"
    missing = [m for m in vlm.UNUSED_MODULES if importlib.util.find_spec(m) is None]
    assert not any(name.split(".")[0] in missing for name in sys.modules)
    assert ssl._create_default_https_context is ssl.create_default_context
    if "torchvision" in missing:
        assert not is_torchvision_available()


def test_import_keeps_autograd_on_for_the_process():
    """vlmeval turns autograd off on import: a user's training loop after scoring would silently
    stop learning (and our own tests after it failed). A fresh interpreter, so the import runs."""
    code = "import torch, zoo.evaluators.vlm; assert torch.is_grad_enabled(), 'autograd left off'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-1000:]


def test_photo_benchmark_scores_by_exact_matching(lmu, tmp_path):
    from vlmeval.smp import dump

    from zoo.evaluators.vlm import LOCAL_BENCHMARK, PHOTO_MCQ, _accuracy, _build, _lmu_data, build_photo_benchmark

    lmu.mkdir()
    with _lmu_data(lmu):
        path = build_photo_benchmark(lmu)
        table = pd.read_csv(path, sep="\t")
        assert list(table.columns) == ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]
        assert len(table) == len(PHOTO_MCQ) and set(table["answer"]) == set("ABCD")
        stamp = path.stat().st_mtime_ns
        assert build_photo_benchmark(lmu).stat().st_mtime_ns == stamp  # unchanged content is not rewritten
        dataset = _build(LOCAL_BENCHMARK, lmu)
        assert type(dataset).__name__ == "CustomMCQDataset" and len(dataset) == len(PHOTO_MCQ)
        message = dataset.build_prompt(dataset.data.iloc[0])
        assert message[0]["type"] == "image" and "Options:\nA. a dog\nB. a cat" in message[1]["value"]
        # Predictions: the right letter in words for all but the last item, which names no option.
        predictions = dataset.data.drop(columns=["image"]).copy()
        predictions["prediction"] = [f"The answer is {a}." for a in predictions["answer"]]
        predictions.loc[len(predictions) - 1, "prediction"] = "I cannot tell."
        dump(predictions, str(tmp_path / "pred.xlsx"))
        result = dataset.evaluate(str(tmp_path / "pred.xlsx"), model="exact_matching", nproc=1)
    assert _accuracy(LOCAL_BENCHMARK, result) == pytest.approx((len(PHOTO_MCQ) - 1) / len(PHOTO_MCQ))


def test_ocrbench_scores_by_its_own_rule(tmp_path):
    """OCRBench is not multiple choice: VLMEvalKit counts answers found in the prediction, per category."""
    from vlmeval.dataset import OCRBench
    from vlmeval.smp import dump

    from zoo.evaluators.vlm import _accuracy

    rows = pd.DataFrame(
        {
            "index": [0, 1, 2],
            "category": ["Regular Text Recognition", "Doc-oriented VQA", "Key Information Extraction"],
            "answer": ["['STOP']", "['1998', '1999']", "['Acme Ltd']"],
            "prediction": ["The sign says stop.", "It was 1999", "unknown"],
        }
    )
    dump(rows, str(tmp_path / "zoo_OCRBench.xlsx"))
    assert _accuracy("OCRBench", OCRBench.evaluate(str(tmp_path / "zoo_OCRBench.xlsx"))) == pytest.approx(2 / 3)


def test_official_benchmarks_name_the_file_to_place(lmu, monkeypatch):
    import vlmeval.dataset.image_base as image_base

    from zoo.errors import ZooError
    from zoo.evaluators.vlm import _build, _lmu_data

    def offline(url, filename=None):
        raise Exception(f"Failed to download {url}")

    monkeypatch.setattr(image_base, "download_file", offline)
    with _lmu_data(lmu), pytest.raises(ZooError, match=r"could not build MMStar: .*place its official MMStar\.tsv"):
        _build("MMStar", lmu)
    with _lmu_data(lmu), pytest.raises(ZooError, match="knows no benchmark 'NoSuchBench'"):
        _build("NoSuchBench", lmu)


def test_subset_keeps_the_scored_split_spread_over_the_rows():
    from types import SimpleNamespace

    from zoo.evaluators.vlm import _subset

    data = pd.DataFrame({"index": range(10), "split": ["dev"] * 4 + ["validation"] * 6})
    mmmu = SimpleNamespace(data=data)
    _subset(mmmu, "MMMU_DEV_VAL", limit=3)
    assert list(mmmu.data["index"]) == [4, 6, 8]
    other = SimpleNamespace(data=data)
    _subset(other, "MMStar", limit=None)
    assert len(other.data) == 10


def test_compress_eval_writes_a_scorecard_for_base_and_compressed(lmu, tmp_path):
    """`zoo compress <tiny Qwen2-VL folder> --eval` offline: calibrated on the shipped photographs,
    scored on the local benchmark before and after, the scorecard saved beside the checkpoint."""
    from tests.tiny_vlm import save_tiny_vlm
    from zoo.compression.apply import CompressionConfig
    from zoo.pipeline import CompressRequest, run_compress
    from zoo.publish.scorecard import Scorecard

    folder = save_tiny_vlm(tmp_path / "tiny", "qwen2_vl")
    result = run_compress(
        CompressRequest(
            model=str(folder),
            config=CompressionConfig(cr=0.3, iters=3),
            out=tmp_path / "out",
            n_samples=6,
            seq_len=256,
            evaluate=True,
            eval_settings={"eval_limit": 4},
        )
    )
    card = Scorecard.load(tmp_path / "out" / "scorecard.json")
    assert card.modality == "vlm" and card.calibration_set == "skimage-photos"
    (metric,) = card.metrics
    assert (metric.task, metric.name, metric.higher_is_better) == ("vlmeval/ZooPhotosMCQ", "accuracy", True)
    assert 0.0 <= metric.base <= 1.0 and 0.0 <= metric.compressed <= 1.0
    assert "| vlmeval/ZooPhotosMCQ | accuracy ↑ |" in card.to_markdown_table()
    assert result.scorecard is not None and (lmu / "ZooPhotosMCQ.tsv").is_file()
    assert metric.source == "stand-in" and card.stand_in_only
    assert card.slice_score is not None and set(card.slice_score.scores) == {"vlmeval/ZooPhotosMCQ"}

    # Published, it reloads in a fresh process (the adapter's image-only processor, the Auto class's
    # from_pretrained) and answers the slice's questions as it did at build time.
    from zoo.publish.publishers import LocalRegistry
    from zoo.rescore import verify_published

    registry = LocalRegistry(tmp_path / "registry", "compot-zoo")
    verification = verify_published(registry, registry.publish(tmp_path / "out", "tiny-vlm"))
    assert verification.status == "verified", verification.reason
