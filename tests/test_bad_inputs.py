"""The catalogue of bad inputs a user can hand us: each ends in one line that names the file,
layer or value at fault, with the right exit code, no traceback, and nothing left behind that
looks complete. One row per class of bad input; add a row with every new one found."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
from click.testing import CliRunner

from tests.conftest import TINY_EVAL, TINY_RUN
from zoo.cli import main
from zoo.errors import ZooError


@dataclass
class Case:
    """`cli` arguments to run (exit `code` expected), or a Python `call` that must raise ZooError."""

    pattern: str  # searched in the one-line message
    cli: list | None = None
    code: int = 1
    call: Callable[[], object] | None = None
    absent: list[Path] = field(default_factory=list)  # outputs that must not exist afterwards
    kept: dict[Path, bytes] = field(default_factory=dict)  # files that must hold these bytes afterwards


@dataclass
class Inputs:
    tmp: Path
    model_dir: Path  # a tiny Llama folder
    text_file: Path  # calibration text for it
    checkpoint: Path  # a scored compressed checkpoint of it (copy before changing it)
    patch: pytest.MonkeyPatch | None = None  # for faults: a full disk, a read-only filesystem

    def copy(self) -> Path:
        return Path(shutil.copytree(self.checkpoint, self.tmp / "ckpt"))


CASES: dict[str, Callable[[Inputs], Case]] = {}


def case(fn: Callable[[Inputs], Case]) -> Callable[[Inputs], Case]:
    CASES[fn.__name__] = fn
    return fn


# --- zoo compress: arguments and outputs ------------------------------------------------------


@case
def cr_out_of_range(i: Inputs) -> Case:
    return Case(r"1\.5 must lie in \(0, 1\)\. Compression ratio", ["compress", i.model_dir, "--cr", 1.5], code=2)


@case
def zero_samples(i: Inputs) -> Case:
    return Case("--n-samples.*0 is not in the range x>=1", ["compress", i.model_dir, "--n-samples", 0], code=2)


@case
def unknown_alias(i: Inputs) -> Case:
    return Case("unknown model 'smollm-135m'.*Did you mean: smollm2-135m", ["compress", "smollm-135m"])


@case
def out_under_a_file(i: Inputs) -> Case:
    (i.tmp / "file").write_text("x")
    out = i.tmp / "file" / "ckpt"
    return Case(r"cannot write .*file/ckpt: .*file is a file", _tiny_compress(i, out), absent=[out])


@case
def overwrite_a_folder_that_is_not_ours(i: Inputs) -> Case:
    out = i.tmp / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    return Case(r"refusing to replace .*notes: .*not a compressed checkpoint", [*_tiny_compress(i, out), "--overwrite"])


@case
def quantize_group_size_without_quantize(i: Inputs) -> Case:
    out = i.tmp / "out"
    args = [*_tiny_compress(i, out), "--quantize-group-size", 7]
    return Case(r"quantize_group_size 7 applies only with quantize", args, absent=[out])


@case
def static_with_method_gptq(i: Inputs) -> Case:
    out = i.tmp / "out"
    args = [*_tiny_compress(i, out), "--method", "gptq", "--quantize", "gptq-w4", "--static"]
    return Case(r"static does not apply to method gptq", args, absent=[out])


@case
def nan_inputs_name_the_block(i: Inputs) -> Case:
    weights = i.model_dir / "model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    tensors["model.layers.0.input_layernorm.weight"][:] = float("nan")
    safetensors.torch.save_file(tensors, weights, metadata={"format": "pt"})
    out = i.tmp / "out"
    return Case(
        r"model\.layers\.0\.self_attn\.q_proj: 1 of 1 calibration batches reached it with NaN/Inf inputs",
        _tiny_compress(i, out),
        absent=[out, i.tmp / ".out.progress"],
    )


@case
def corrupt_config_json(i: Inputs) -> Case:
    (i.model_dir / "config.json").write_text("{not json")
    return Case(r"tiny-llama/config\.json is not a valid JSON config", _tiny_compress(i, i.tmp / "out"))


@case
def model_folder_without_weights(i: Inputs) -> Case:
    (i.model_dir / "model.safetensors").unlink()
    return Case(r"cannot load a model from .*tiny-llama", _tiny_compress(i, i.tmp / "out"), absent=[i.tmp / "out"])


@case
def truncated_model_weights(i: Inputs) -> Case:
    weights = i.model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return Case(r"cannot load a model from .*tiny-llama", _tiny_compress(i, i.tmp / "out"), absent=[i.tmp / "out"])


@case
def calibration_folder_with_a_dataset_script(i: Inputs) -> Case:
    folder = i.tmp / "calib-set"
    folder.mkdir()
    shutil.copy(i.text_file, folder / "train.jsonl")
    (folder / "calib_set.py").write_text("import os  # datasets would once have run this\n")
    out = i.tmp / "out"
    args = ["compress", i.model_dir, *TINY_RUN, "--calibration", folder, "--out", out]
    return Case(r"calib-set holds a dataset script \(calib_set\.py\), which is never run", args, absent=[out])


class _NotATensor:
    """What a pickle may hold besides tensors: a call made while it is read."""

    def __reduce__(self):
        return (print, ("a pickle ran code",))


@case
def base_model_stored_as_a_pickle(i: Inputs) -> Case:
    import torch

    weights = i.model_dir / "model.safetensors"
    torch.save({**safetensors.torch.load_file(weights), "planted": _NotATensor()}, i.model_dir / "pytorch_model.bin")
    weights.unlink()
    out = i.tmp / "out"
    return Case(
        r"cannot load a model from .*tiny-llama: its weights are a pickle holding more than tensors, refused",
        _tiny_compress(i, out),
        absent=[out],
    )


@case
def invalid_jsonl(i: Inputs) -> Case:
    i.text_file.write_text('{"text": "fine"}\n{not json\n')
    return Case(r"cannot read text from .*calib\.jsonl", _tiny_compress(i, i.tmp / "out"))


@case
def empty_jsonl(i: Inputs) -> Case:
    i.text_file.write_text("")
    return Case(r"calib\.jsonl", _tiny_compress(i, i.tmp / "out"))


@case
def non_utf8_jsonl(i: Inputs) -> Case:
    i.text_file.write_bytes(b'{"text": "caf\xe9 au lait"}\n')
    return Case(r"calib\.jsonl is not UTF-8 text", _tiny_compress(i, i.tmp / "out"))


@case
def non_string_text(i: Inputs) -> Case:
    i.text_file.write_text('{"text": 5}\n{"text": 6}\n')
    return Case(r"calib\.jsonl \(train\): row 0 of column 'text' is int, not text", _tiny_compress(i, i.tmp / "out"))


# --- the compressed checkpoint, loaded by zoo.load and by transformers -----------------------


def _edit_layers(ckpt: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    edit(next(iter(config["quantization_config"]["layers"].values())))
    (ckpt / "config.json").write_text(json.dumps(config))


def _edit_tensors(ckpt: Path, edit: Callable[[dict], None]) -> None:
    tensors = safetensors.torch.load_file(ckpt / "model.safetensors")
    edit(tensors)
    safetensors.torch.save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


def _zoo_load(path: Path) -> Callable[[], object]:
    import zoo

    return lambda: zoo.load(path)


def _from_pretrained(path: Path) -> Callable[[], object]:
    from transformers import AutoModelForCausalLM

    import zoo  # noqa: F401  (registers the quantizer)

    return lambda: AutoModelForCausalLM.from_pretrained(path)


@case
def truncated_checkpoint(i: Inputs) -> Case:
    ckpt = i.copy()
    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:-100])
    return Case(r"ckpt/model\.safetensors is corrupt or truncated", call=_zoo_load(ckpt))


@case
def checkpoint_without_config(i: Inputs) -> Case:
    ckpt = i.copy()
    (ckpt / "config.json").unlink()
    return Case(r"ckpt/config\.json is missing", call=_zoo_load(ckpt))


@case
def checkpoint_with_a_corrupt_config(i: Inputs) -> Case:
    ckpt = i.copy()
    (ckpt / "config.json").write_text("{not json")
    return Case(r"ckpt/config\.json is not a valid config", call=_zoo_load(ckpt))


@case
def hub_variant_offline(i: Inputs) -> Case:
    import zoo

    return Case(r"cannot load someorg/somemodel from the Hub: ", call=lambda: zoo.load("someorg/somemodel"))


@case
def layer_entry_without_k(i: Inputs) -> Case:
    ckpt = i.copy()
    _edit_layers(ckpt, lambda layer: layer.pop("k"))
    return Case(r"compressed layer model\.layers\.0\.\S+: .*lacks or mistypes k \(int\)", call=_zoo_load(ckpt))


@case
def layer_entry_of_the_wrong_type(i: Inputs) -> Case:
    ckpt = i.copy()
    _edit_layers(ckpt, lambda layer: layer.update(k="7"))
    return Case(r"compressed layer model\.layers\.0\.\S+: .*mistypes k \(int\)", call=_from_pretrained(ckpt))


@case
def a_k_that_would_allocate_terabytes(i: Inputs) -> Case:
    ckpt = i.copy()
    _edit_layers(ckpt, lambda layer: layer.update(k=10**12))
    return Case(
        r"compressed layer model\.layers\.0\.\S+: .*1 <= s <= k <= \d+ atoms, got k=1000000000000",
        call=_zoo_load(ckpt),
    )


@case
def code_mask_of_the_wrong_shape(i: Inputs) -> Case:
    ckpt = i.copy()

    def cut(tensors):
        key = next(k for k in tensors if k.endswith("code_mask"))
        tensors[key] = tensors[key][:-1].clone()

    _edit_tensors(ckpt, cut)
    return Case(
        r"model\.safetensors: model\.layers\.\S+\.code_mask has shape \(\d+,\), the layer expects", call=_zoo_load(ckpt)
    )


def _nan_dictionary(tensors):
    key = next(k for k in tensors if k.endswith("dictionary"))
    tensors[key][0, 0] = float("nan")


@case
def nan_factors_zoo_load(i: Inputs) -> Case:
    ckpt = i.copy()
    _edit_tensors(ckpt, _nan_dictionary)
    return Case(r"model\.layers\.\S+\.dictionary holds NaN/Inf values", call=_zoo_load(ckpt))


@case
def nan_factors_from_pretrained(i: Inputs) -> Case:
    ckpt = i.copy()
    _edit_tensors(ckpt, _nan_dictionary)
    return Case(r"model\.layers\.\S+\.dictionary holds NaN/Inf values", call=_from_pretrained(ckpt))


@case
def compressed_tensor_missing_from_pretrained(i: Inputs) -> Case:
    ckpt = i.copy()
    _edit_tensors(ckpt, lambda t: t.pop(next(k for k in t if k.endswith("code_values"))))
    return Case(r"the weights hold no model\.layers\.\S+\.code_values", call=_from_pretrained(ckpt))


# --- speech and image sets --------------------------------------------------------------------


def _wav(rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(1600, "<i2").tobytes())
    data = bytearray(buffer.getvalue())
    data[24:28] = rate.to_bytes(4, "little")  # the header's sample rate, as a broken recorder writes it
    return bytes(data)


def _load_speech(folder: Path) -> Callable[[], object]:
    from zoo.calibration.speech import load_speech

    return lambda: load_speech(str(folder), 1)


@case
def audio_with_a_sample_rate_of_zero(i: Inputs) -> Case:
    folder = i.tmp / "speech"
    folder.mkdir()
    (folder / "a.wav").write_bytes(_wav(rate=0))
    (folder / "a.txt").write_text("hello")
    return Case(r"audio .*a\.wav declares a sample rate of 0 Hz", call=_load_speech(folder))


@case
def non_utf8_transcript(i: Inputs) -> Case:
    folder = i.tmp / "speech"
    folder.mkdir()
    (folder / "a.wav").write_bytes(_wav())
    (folder / "a.txt").write_bytes(b"caf\xe9")
    return Case(r"transcript .*a\.txt is not UTF-8", call=_load_speech(folder))


def _questions(i: Inputs, lines: list[dict], good: int = 1) -> Callable[[], object]:
    from PIL import Image

    from zoo.calibration.vision import load_visual_questions

    folder = i.tmp / "images"
    folder.mkdir(exist_ok=True)
    for k in range(good):
        Image.new("RGB", (32, 32), (k * 40, 0, 0)).save(folder / f"good{k}.png")
    lines = [{"image": f"good{k}.png", "question": "What colour?"} for k in range(good)] + lines
    (folder / "questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return lambda: load_visual_questions(str(folder), 1)


@case
def missing_image_with_one_sample(i: Inputs) -> Case:
    return Case(
        r"cannot open image .*images/absent\.png",
        call=_questions(i, [{"image": "absent.png", "question": "What is it?"}], good=3),
    )


@case
def unopenable_image_with_one_sample(i: Inputs) -> Case:
    call = _questions(i, [{"image": "broken.png", "question": "What is it?"}], good=3)
    (i.tmp / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    return Case(r"cannot open image .*images/broken\.png", call=call)


@case
def image_outside_its_folder(i: Inputs) -> Case:
    (i.tmp / "outside.png").write_bytes(b"")
    return Case(
        r"questions\.jsonl line 2: image '\.\./outside\.png' lies outside",
        call=_questions(i, [{"image": "../outside.png", "question": "What is it?"}]),
    )


@case
def decompression_bomb_image(i: Inputs) -> Case:
    from PIL import Image

    call = _questions(i, [])
    Image.new("RGB", (4000, 4000)).save(i.tmp / "images" / "good0.png")
    limit = Image.MAX_IMAGE_PIXELS

    def run():
        Image.MAX_IMAGE_PIXELS = 1000  # 16 M pixels is then far past twice the limit: a bomb
        try:
            return call()
        finally:
            Image.MAX_IMAGE_PIXELS = limit

    return Case(r"cannot open image .*good0\.png: .*decompression bomb", call=run)


@case
def non_utf8_questions(i: Inputs) -> Case:
    call = _questions(i, [])
    (i.tmp / "images" / "questions.jsonl").write_bytes(b'{"image": "good0.png", "question": "caf\xe9?"}\n')
    return Case(r"questions\.jsonl is not UTF-8", call=call)


# --- the nightly manifest -------------------------------------------------------------------------


def _manifest(i: Inputs, text: str) -> list:
    path = i.tmp / "manifest.toml"
    path.write_text(text)
    return ["nightly", "--manifest", path, "--registry", i.tmp / "registry", "--report-dir", i.tmp / "report"]


_ENTRY = '[[models]]\nmodel = "smollm2-135m"\n'


@case
def manifest_with_a_misspelt_publish_table(i: Inputs) -> Case:
    text = f'[publsh]\norganization = "x"\n{_ENTRY}crs = [0.2]\n'
    return Case(r"manifest\.toml: unknown keys publsh", _manifest(i, text))


@case
def manifest_with_a_misspelt_publish_key(i: Inputs) -> Case:
    return Case(
        r"manifest\.toml: \[publish\]: unknown keys organisation",
        _manifest(i, f'[publish]\norganisation = "x"\n{_ENTRY}crs = [0.2]\n'),
    )


@case
def manifest_crs_not_numbers(i: Inputs) -> Case:
    return Case(
        r"\[\[models\]\] #1: crs = \['abc'\] should be a list of int/float", _manifest(i, f'{_ENTRY}crs = ["abc"]\n')
    )


@case
def manifest_crs_not_a_list(i: Inputs) -> Case:
    return Case(r"\[\[models\]\] #1: crs = 0\.2 should be a list of int/float", _manifest(i, f"{_ENTRY}crs = 0.2\n"))


@case
def manifest_models_not_tables(i: Inputs) -> Case:
    return Case(r"manifest\.toml: models must be a list of \[\[models\]\] tables, got 5", _manifest(i, "models = 5\n"))


@case
def manifest_asks_for_a_runner_it_does_not_define(i: Inputs) -> Case:
    call = _manifest(i, f'{_ENTRY}crs = [0.2]\nrunner = "tpu"\n')
    return Case(r"#1: runner 'tpu' is not in \[runners\]: cpu", [*call, "--list-jobs"])


@case
def nightly_for_a_model_not_in_the_manifest(i: Inputs) -> Case:
    call = _manifest(i, f"{_ENTRY}crs = [0.2]\n")
    return Case(r"the manifest has no model 'gpt2'; it has smollm2-135m", [*call, "--model", "gpt2"])


@case
def gather_without_reports(i: Inputs) -> Case:
    return Case(r"no report to gather: .*nowhere: FileNotFoundError", ["gather", i.tmp / "nowhere"])


def _job_report(i: Inputs, edit: Callable[[dict], None]) -> Path:
    """A `zoo nightly --model` job's report folder, its report.json edited."""
    folder = i.tmp / "job"
    folder.mkdir()
    data = {"started": "2025-01-01T00:00:00+00:00", "updated": "2025-01-01T01:00:00+00:00", "registry": "x"}
    variant = {"variant": "v", "status": "rebuilt", "reason": "", "seconds": 1.0, "url": None, "achieved_cr": 0.2}
    variant |= {"regressions": [], "broken": False, "changes": [], "verification_reason": ""}
    data["variants"] = [variant]
    edit(data)
    (folder / "report.json").write_text(json.dumps(data))
    return folder


@case
def gather_a_report_with_a_number_for_a_date(i: Inputs) -> Case:
    job = _job_report(i, lambda d: d.update(started=5))
    return Case(r"no report to gather: .*job: ZooError: report\.json: started is 5, of the wrong type", ["gather", job])


@case
def gather_a_report_without_a_field(i: Inputs) -> Case:
    job = _job_report(i, lambda d: d.pop("started"))
    return Case(r"no report to gather: .*job: ZooError: report\.json lacks 'started'", ["gather", job])


@case
def gather_a_report_with_a_string_for_a_cr(i: Inputs) -> Case:
    job = _job_report(i, lambda d: d["variants"][0].update(achieved_cr="0.2"))
    return Case(r"job: ZooError: variant #1: achieved_cr is '0\.2', of the wrong type", ["gather", job])


# --- publishing -------------------------------------------------------------------------------


@case
def publish_without_weights(i: Inputs) -> Case:
    ckpt = i.copy()
    (ckpt / "model.safetensors").unlink()
    registry = i.tmp / "registry"
    return Case(r"ckpt/model\.safetensors is missing", ["publish", ckpt, registry], absent=[registry / "compot-zoo"])


@case
def publish_a_metric_of_unknown_provenance(i: Inputs) -> Case:
    ckpt = i.copy()
    card = json.loads((ckpt / "scorecard.json").read_text())
    card["metrics"][0]["source"] = "hearsay"
    (ckpt / "scorecard.json").write_text(json.dumps(card))
    registry = i.tmp / "registry"
    pattern = (
        r"ckpt/scorecard\.json: metric '.*' of task '.*': source 'hearsay' is not one of \('benchmark', 'stand-in'\)"
    )
    return Case(pattern, ["publish", ckpt, registry], absent=[registry / "compot-zoo"])


@case
def publish_a_symlink(i: Inputs) -> Case:
    ckpt = i.copy()
    (i.tmp / "secret.txt").write_text("not for publishing")
    os.symlink(i.tmp / "secret.txt", ckpt / "notes.txt")
    registry = i.tmp / "registry"
    return Case(r"ckpt/notes\.txt is a symbolic link", ["publish", ckpt, registry], absent=[registry / "compot-zoo"])


@case
def push_to_an_unreachable_hub(i: Inputs) -> Case:
    os.environ["HF_TOKEN"] = "hf_test_token_not_real"
    return Case(
        r"the Hugging Face Hub is unreachable .*cannot check the token",
        [*_tiny_compress(i, i.tmp / "out"), "--push", "hub"],
        absent=[i.tmp / "out"],
    )


@case
def browse_an_unreachable_hub(i: Inputs) -> Case:
    return Case(r"the Hugging Face Hub is unreachable .*cannot list models", ["browse", "hub"])


# --- the registry: every access checks the name ------------------------------------------------


def _registry(i: Inputs, variant: str = "tiny-compot") -> Path:
    """A local registry holding the scored checkpoint as `variant`."""
    registry = i.tmp / "registry"
    shutil.copytree(i.checkpoint, registry / "compot-zoo" / variant)
    return registry


def _outside(i: Inputs) -> Path:
    """A variant-like folder outside the registry, which no registry access may write into."""
    return Path(shutil.copytree(i.checkpoint, i.tmp / "outside_variant"))


@case
def verify_a_name_that_climbs_out_of_the_registry(i: Inputs) -> Case:
    outside = _outside(i)
    return Case(
        r"invalid repository name compot-zoo/\.\./\.\./outside_variant",
        ["verify", "../../outside_variant", _registry(i)],
        absent=[outside / "verification.json"],
    )


@case
def verify_an_absolute_path(i: Inputs) -> Case:
    outside = _outside(i)
    return Case(
        r"invalid repository name compot-zoo//.*outside_variant",
        ["verify", outside, _registry(i)],
        absent=[outside / "verification.json"],
    )


@case
def verify_a_link_that_leaves_the_registry(i: Inputs) -> Case:
    outside, registry = _outside(i), _registry(i)
    os.symlink(outside, registry / "compot-zoo" / "linked")
    return Case(
        r"registry/compot-zoo/linked is a symbolic link to .*outside_variant, outside local registry",
        ["verify", "linked", registry],
        absent=[outside / "verification.json"],
    )


def _registry_call(i: Inputs, call: Callable[[object], object]) -> Callable[[], object]:
    from zoo.publish.publishers import LocalRegistry

    return lambda: call(LocalRegistry(_registry(i), "compot-zoo"))


@case
def mark_a_name_that_climbs_out_of_the_registry(i: Inputs) -> Case:
    from zoo.publish.verdict import Verification

    outside = _outside(i)
    verdict = Verification(status="broken", reason="planted", fingerprint="x", expected={}, measured=None)
    return Case(
        r"invalid repository name compot-zoo/\.\./\.\./outside_variant",
        call=_registry_call(i, lambda r: r.mark("../../outside_variant", verdict)),
        absent=[outside / "verification.json"],
    )


@case
def download_a_name_that_climbs_out_of_the_registry(i: Inputs) -> Case:
    _outside(i)
    return Case(
        r"invalid repository name compot-zoo/\.\./\.\./outside_variant",
        call=_registry_call(i, lambda r: r.download("../../outside_variant", i.tmp / "copy")),
        absent=[i.tmp / "copy"],
    )


@case
def browse_a_registry_that_does_not_exist(i: Inputs) -> Case:
    return Case(r"there is no local registry .*no-such-registry", ["browse", i.tmp / "no-such-registry"])


@case
def site_of_a_registry_that_does_not_exist(i: Inputs) -> Case:
    site = i.tmp / "site"
    return Case(
        r"there is no local registry .*no-such-registry",
        ["site", i.tmp / "no-such-registry", "--out", site],
        absent=[site],
    )


@case
def site_of_a_registry_whose_every_scorecard_is_corrupt(i: Inputs) -> Case:
    from zoo.publish.site import render_site

    registry = _registry(i)
    index = render_site([], i.tmp / "site")  # the site published before
    (registry / "compot-zoo" / "tiny-compot" / "scorecard.json").write_text("{not json")
    return Case(
        r"no readable published variant: the site in .*site is kept",
        ["site", registry, "--out", i.tmp / "site"],
        kept={index: index.read_bytes()},
    )


# --- filesystem faults: a full disk, a read-only or pseudo-filesystem, a file in the path -------------


def _fail_writes(i: Inputs, owner: object, name: str, code: int, after: int = 0, message: str = "") -> None:
    """`owner.name` (a writer) fails as a full or read-only disk makes it fail, after `after` calls
    that work: OSError(code), or an error whose `message` carries the code (safetensors' Rust one)."""
    real, calls = getattr(owner, name), []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) <= after:
            return real(*args, **kwargs)
        raise OSError(code, os.strerror(code)) if not message else safetensors.SafetensorError(message)

    i.patch.setattr(owner, name, failing)


def _read_only(i: Inputs) -> Path:
    """A folder whose filesystem says it is read-only, as a read-only mount does (os.statvfs's flag)."""
    folder = i.tmp / "ro"
    folder.mkdir()
    real = os.statvfs

    def statvfs(path):
        found = real(path)
        if Path(path).resolve().is_relative_to(folder.resolve()):
            return os.statvfs_result((*found[:8], found.f_flag | os.ST_RDONLY, found.f_namemax))
        return found

    i.patch.setattr(os, "statvfs", statvfs)
    return folder


@case
def compress_on_a_full_disk(i: Inputs) -> Case:
    import zoo.format.progress

    _fail_writes(i, zoo.format.progress, "save_file", errno.ENOSPC, after=1)  # the second block's
    out = i.tmp / "out"
    return Case(
        r"cannot write .*\.out\.progress/model\.layers\.1\.safetensors: No space left on device; free some space "
        r"there or write elsewhere; 1 finished block\(s\) kept in .*\.out\.progress: rerun the same command",
        _tiny_compress(i, out),
        absent=[out, i.tmp / ".out.progress" / "model.layers.1.safetensors"],
    )


@case
def compress_where_the_checkpoint_cannot_fit(i: Inputs) -> Case:
    import shutil

    import zoo.pipeline

    usage = shutil.disk_usage(i.tmp)
    i.patch.setattr(zoo.pipeline.shutil, "disk_usage", lambda _: usage._replace(free=4096))
    out = i.tmp / "out"
    return Case(
        r"\S+ has 0\.00 GiB free; writing .*/out takes about 0\.\d\d GiB \(the checkpoint and its per-block "
        r"progress\): free some space there or pass another --out",
        _tiny_compress(i, out),
        absent=[out, i.tmp / ".out.progress"],
    )


@case
def compress_on_a_full_disk_while_saving(i: Inputs) -> Case:
    import zoo.format.checkpoint

    rust = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    _fail_writes(i, zoo.format.checkpoint, "save_file", errno.ENOSPC, message=rust)
    out = i.tmp / "out"
    return Case(
        r"cannot write .*/out: No space left on device; .*; 2 finished block\(s\) kept in .*\.out\.progress",
        _tiny_compress(i, out),
        absent=[out],
    )


@case
def compress_to_a_read_only_filesystem(i: Inputs) -> Case:
    out = _read_only(i) / "out"
    return Case(r"cannot write .*ro/out: .*ro is on a read-only filesystem", _tiny_compress(i, out), absent=[out])


@case
def compress_into_proc(i: Inputs) -> Case:
    out = Path("/proc/zoo-bad-input-out")
    return Case(r"cannot write /proc/zoo-bad-input-out: /proc is on proc, a kernel's pseudo-filesystem",
                _tiny_compress(i, out), absent=[out])  # fmt: skip


@case
def compress_into_sys(i: Inputs) -> Case:
    out = Path("/sys/zoo-bad-input-out")
    return Case(r"cannot write /sys/zoo-bad-input-out: /sys is on sysfs", _tiny_compress(i, out), absent=[out])


@case
def publish_to_a_full_disk(i: Inputs) -> Case:
    ckpt, registry = i.copy(), i.tmp / "registry"
    _fail_writes(i, shutil, "copy2", errno.ENOSPC)
    return Case(
        r"cannot write .*registry/compot-zoo/ckpt: No space left on device",
        ["publish", ckpt, registry],
        absent=[registry / "compot-zoo" / "ckpt"],
    )


@case
def publish_to_a_read_only_filesystem(i: Inputs) -> Case:
    ckpt, registry = i.copy(), i.tmp / "registry"
    _fail_writes(i, shutil, "copy2", errno.EROFS)
    return Case(
        r"cannot write .*registry/compot-zoo/ckpt: Read-only file system; write elsewhere",
        ["publish", ckpt, registry],
        absent=[registry / "compot-zoo" / "ckpt"],
    )


@case
def publish_to_a_registry_under_a_file(i: Inputs) -> Case:
    ckpt = i.copy()
    (i.tmp / "file").write_text("x")
    return Case(
        r"cannot write .*file/registry/compot-zoo: .*file is a file", ["publish", ckpt, i.tmp / "file" / "registry"]
    )


@case
def site_on_a_full_disk(i: Inputs) -> Case:
    import pathlib

    registry, site = _registry(i), i.tmp / "site"
    _fail_writes(i, pathlib.Path, "write_text", errno.ENOSPC)
    return Case(r"cannot write .*/site: No space left on device", ["site", registry, "--out", site], absent=[site])


@case
def site_on_a_read_only_filesystem(i: Inputs) -> Case:
    registry, site = _registry(i), _read_only(i) / "site"
    return Case(r"cannot write .*ro/site: .*ro is on a read-only filesystem", ["site", registry, "--out", site])


@case
def nightly_report_on_a_read_only_filesystem(i: Inputs) -> Case:
    report = _read_only(i) / "report"
    args = [*_manifest(i, f"{_ENTRY}crs = [0.2]\n"), "--report-dir", report, "--workdir", i.tmp / "work"]
    return Case(r"cannot write .*ro/report/report\.json: .*ro is on a read-only filesystem", args, absent=[report])


@case
def gate_report_on_a_read_only_filesystem(i: Inputs) -> Case:
    out = _read_only(i) / "gate"
    manifest = i.tmp / "gate.toml"
    manifest.write_text(f"{_ENTRY}crs = [0.2]\n")
    args = ["gate", "--manifest", manifest, "--against", i.tmp / "registry", "--workdir", i.tmp / "work", "--out", out]
    return Case(r"cannot write .*ro/gate/gate\.md: .*ro is on a read-only filesystem", args, absent=[out])


def _tiny_compress(i: Inputs, out: Path) -> list:
    return ["compress", i.model_dir, *TINY_RUN, "--calibration", i.text_file, "--iters", 2, "--out", out]


@pytest.fixture(scope="module")
def scored_checkpoint(tmp_path_factory) -> Path:
    from tests.conftest import TEXT
    from tests.tiny_models import tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("scored")
    tiny_llama().save_pretrained(root / "tiny-llama")
    tiny_tokenizer().save_pretrained(root / "tiny-llama")
    (root / "calib.jsonl").write_text("\n".join(json.dumps({"text": TEXT * 4}) for _ in range(20)))
    out = root / "tiny-compot"
    args = ["compress", root / "tiny-llama", *TINY_RUN, "--calibration", root / "calib.jsonl", "--out", out, *TINY_EVAL]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_line_that_names_it(name, tmp_path, model_dir, text_file, scored_checkpoint, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", os.environ.get("HF_TOKEN", ""))  # a case may set it; restore afterwards
    c = CASES[name](Inputs(tmp_path, model_dir, text_file, scored_checkpoint, monkeypatch))
    if c.cli is not None:
        result = CliRunner().invoke(main, [str(a) for a in c.cli])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{name} raised {result.exception!r}:\n{result.output}"
        )
        assert "Traceback" not in result.output
        assert result.exit_code == c.code, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.output
        message = errors[0]
    else:
        with pytest.raises(ZooError) as info:
            c.call()
        message = str(info.value)
        assert "\n" not in message, message
    assert re.search(c.pattern, message), message
    for path in c.absent:
        assert not path.exists(), f"{name} left {path} behind"
    for path, data in c.kept.items():
        assert path.read_bytes() == data, f"{name} changed {path}"
    half_written = [*tmp_path.rglob("*.partial-*"), *tmp_path.rglob(".*.tmp*")]
    assert not half_written, f"{name} left {half_written} behind"


def test_browse_skips_a_link_that_leaves_the_registry(tmp_path, scored_checkpoint, caplog):
    registry = tmp_path / "registry" / "compot-zoo"
    shutil.copytree(scored_checkpoint, registry / "tiny-compot")
    os.symlink(Path(shutil.copytree(scored_checkpoint, tmp_path / "elsewhere")), registry / "linked")
    result = CliRunner().invoke(main, ["browse", str(tmp_path / "registry")])
    assert result.exit_code == 0, result.output
    assert "compot-zoo/tiny-compot" in result.output and "compot-zoo/linked" not in result.output
    assert re.search(r"skipping .*linked: .*is a symbolic link to .*elsewhere", caplog.text), caplog.text


# --- two runs on one folder -----------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _zoo_process(*args) -> subprocess.Popen:
    """`zoo ARGS` in its own process, as a second user would start it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from zoo.cli import main; main()", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _refused_at_once(args: list, pattern: str) -> None:
    start = time.monotonic()
    result = CliRunner().invoke(main, [str(a) for a in args])
    seconds = time.monotonic() - start
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert re.search(pattern, result.output), result.output
    assert seconds < 5, f"refused after {seconds:.1f} s"


def test_a_second_compress_on_one_out_is_refused_at_once(tmp_path, model_dir, text_file):
    """The first run holds --out's lock from before loading the model to after saving; the second
    says which run holds it, and the first saves a whole checkpoint."""
    import zoo

    out = tmp_path / "out"
    args = [*_tiny_compress(Inputs(tmp_path, model_dir, text_file, out), out)]
    first = _zoo_process(*args, "--iters", 300)  # slow enough to be caught working
    try:
        _wait_for(tmp_path / ".out.lock.holder", first)
        _refused_at_once(args, r"Error: output directory .*out is in use by another run \(pid \d+ on .* compress")
        output = first.communicate(timeout=600)[0]
    finally:
        first.kill()
    assert first.returncode == 0, output
    zoo.load(out)
    assert not any((tmp_path / name).exists() for name in (".out.progress", ".out.lock", ".out.lock.holder"))


@pytest.mark.parametrize("held", ["registry", "work"])
def test_a_second_nightly_on_one_registry_or_work_folder_is_refused_at_once(tmp_path, held):
    """A nightly run holds its registry and its work folder from before its first model loads."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from zoo.files import exclusive\n"
         "with exclusive(__import__('pathlib').Path(sys.argv[1]), 'x'):\n    print(flush=True); time.sleep(600)",
         str(tmp_path / held / ".lock")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        _wait_for(tmp_path / held / ".lock.holder", holder)
        args = _manifest(Inputs(tmp_path, tmp_path, tmp_path, tmp_path), f"{_ENTRY}crs = [0.2]\n")
        what = "local registry .*registry" if held == "registry" else "nightly work folder .*work"
        _refused_at_once(
            [*args, "--workdir", tmp_path / "work"], f"Error: {what} is in use by another run \\(pid {holder.pid} "
        )
    finally:
        holder.kill()
    assert not (tmp_path / "report").exists()


def test_nightly_logs_a_user_error_in_one_line(tmp_path, model_dir, text_file, caplog):
    """A plan of many bad entries must not print a traceback per entry; -v (INFO) shows them."""
    manifest = tmp_path / "nightly.toml"
    manifest.write_text(f'[[models]]\nmodel = "{tmp_path / "missing"}"\ncrs = [0.2]\ncalibration = "{text_file}"\n')
    args = [*_manifest(Inputs(tmp_path, model_dir, text_file, model_dir), "")[:1], "--manifest", manifest]
    args += ["--registry", tmp_path / "registry", "--workdir", tmp_path / "work", "--report-dir", tmp_path / "report"]
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1 and "1 of 1 variants failed" in result.output, result.output
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and "Traceback" not in caplog.text, caplog.text
    assert re.search(r"nightly: missing-\S+ failed: unknown model .*missing", failed[0].getMessage()), caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" in caplog.text


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda card: card.update(achieved_cr="0.3"), r"achieved_cr '0\.3' is not a number in \[-1, 1\]"),
        (lambda card: card.update(target_cr=1e300), r"target_cr 1e\+300 is not a number in \[0, 1\]"),
        (lambda card: card["metrics"][0].update(compressed=1e308), r"metric .* scored 1e\+308, not a finite"),
    ],
    ids=["string-for-a-number", "cr-1e300", "metric-1e308"],
)
@pytest.mark.parametrize("command", ["browse", "site"])
def test_a_scorecard_out_of_range_is_named_and_skipped(tmp_path, scored_checkpoint, caplog, edit, named, command):
    registry = tmp_path / "registry" / "compot-zoo"
    shutil.copytree(scored_checkpoint, registry / "good")
    bad = Path(shutil.copytree(scored_checkpoint, registry / "bad")) / "scorecard.json"
    card = json.loads(bad.read_text())
    edit(card)
    bad.write_text(json.dumps(card))
    args = [command, tmp_path / "registry", *(["--out", tmp_path / "site"] if command == "site" else [])]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert re.search(f"skipping .*bad: .*bad/scorecard.json: {named}", caplog.text), caplog.text
    shown = (
        result.output if command == "browse" else "".join(p.read_text() for p in (tmp_path / "site").rglob("*.html"))
    )
    assert "compot-zoo/good" in shown and "compot-zoo/bad" not in shown
