"""Qwen-VL (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): compress the language tower, keep vision dense.

The paper compresses only the language model of Qwen3-VL; the vision tower and its projector
(merger) stay as they are. Calibration runs image + question pairs through the processor and
the whole model, so the language tower's first block sees real interleaved vision and text
tokens with the model's own multimodal rotary positions (mrope), captured as its inputs.
Architecture knowledge sits in the tables below.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Sequence

import transformers
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from zoo.compression.targets import CalibrationData, Stack
from zoo.errors import ZooError
from zoo.evaluators.scores import Results
from zoo.modalities.base import hidden_and_rotary_floats, layer_kinds
from zoo.modalities.decoder_llm import TARGET_GROUPS as LLM_TARGET_GROUPS
from zoo.sources.catalogue import ModelSpec
from zoo.sources.loading import DEFAULT_LOAD, Family, LoadedModel, LoadOptions, load_model

log = logging.getLogger(__name__)

# model_type -> (where the language tower's decoder blocks sit, each block's projections grouped
# by the input they share). The vision tower (model.visual, with its merger) is never listed.
LANGUAGE_TOWERS = {
    "qwen2_vl": ("model.language_model.layers", LLM_TARGET_GROUPS["qwen2"]),
    "qwen2_5_vl": ("model.language_model.layers", LLM_TARGET_GROUPS["qwen2"]),
    "qwen3_vl": ("model.language_model.layers", LLM_TARGET_GROUPS["qwen3"]),
}
# model_type -> config attribute listing the vision layers whose features the language tower adds
# to its hidden states after each of its first len(...) blocks (Qwen3-VL's DeepStack). Outside the
# blocks, so replaying blocks alone would miss them: the tower is split there into stacks whose
# first-block inputs are captured from the whole model.
DEEPSTACK = {"qwen3_vl": "vision_config.deepstack_visual_indexes"}
# model_type -> processor class, built image-only where torchvision (the video processor) is missing.
PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}
COMPONENTS = ("language",)
_PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids")  # processor outputs laid along the sequence


@functools.cache
def image_only(processor_class: str) -> type:
    """The transformers processor class without its video processor, which needs torchvision:
    images and text are processed by the class's own code, videos are refused. Named like the
    original, so saved processor files load with AutoProcessor where torchvision exists."""
    base = getattr(transformers, processor_class)

    @classmethod
    def get_attributes(cls) -> list[str]:
        return [a for a in base.get_attributes() if a != "video_processor"]

    return type(processor_class, (base,), {"get_attributes": get_attributes, "__module__": __name__})


class QwenVLProcessor:
    """Loads a Qwen-VL processor: AutoProcessor where torchvision exists, else the image-only class."""

    @staticmethod
    def from_pretrained(source: str, revision: str | None = None):
        if is_torchvision_available():
            return AutoProcessor.from_pretrained(source, revision=revision)
        model_type = AutoConfig.from_pretrained(source, revision=revision).model_type
        if model_type not in PROCESSORS:
            raise ZooError(
                f"{source}: model_type {model_type!r} is not a Qwen-VL model; known: {', '.join(sorted(PROCESSORS))}"
            )
        log.info("torchvision is not installed: %s loads image-only (no videos)", PROCESSORS[model_type])
        return image_only(PROCESSORS[model_type]).from_pretrained(source, revision=revision)


def fit_image(image: Image.Image, processor, max_tokens: int | None) -> Image.Image:
    """`image` downscaled so the language tower gets at most `max_tokens` tokens for it: the
    processor cuts images into (patch x merge)-pixel squares, one language token each."""
    if max_tokens is None:
        return image
    ip = processor.image_processor
    side = ip.patch_size * ip.merge_size
    w, h = image.size
    if (round(w / side) or 1) * (round(h / side) or 1) <= max_tokens:
        return image
    scale = math.sqrt(max_tokens / ((w / side) * (h / side)))
    cols, rows = max(1, math.floor(w / side * scale)), max(1, math.floor(h / side * scale))
    return image.resize((cols * side, rows * side), Image.Resampling.BICUBIC)


def chat_inputs(
    processor,
    content: Sequence[str | Image.Image],
    answer: str | None = None,
    max_tokens: int | None = None,
    max_image_tokens: int | None = None,
) -> dict:
    """Model inputs for one user turn of interleaved images and texts, through the model's chat
    template; with `answer`, the assistant's reply follows (teacher forcing), else the prompt
    ends where the assistant would start. `max_tokens` truncates the text after the images."""
    parts = [{"type": "text", "text": c} if isinstance(c, str) else {"type": "image"} for c in content]
    messages = [{"role": "user", "content": parts}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
    images = [fit_image(c, processor, max_image_tokens) for c in content if not isinstance(c, str)]
    inputs = dict(processor(text=[text], images=images or None, return_tensors="pt"))
    length = inputs["input_ids"].shape[1]
    if max_tokens is None or length <= max_tokens:
        return inputs
    if (inputs["input_ids"][0, max_tokens:] == processor.image_token_id).any():
        raise ZooError(
            f"a {length}-token sample cut to {max_tokens} tokens would lose image tokens: "
            "raise seq_len or lower the image budget"
        )
    return {k: v[:, :max_tokens] if k in _PER_TOKEN else v for k, v in inputs.items()}


class QwenVL:
    modality = "vlm"
    auto_class = "AutoModelForImageTextToText"
    distills = False

    def load(self, spec: ModelSpec, options: LoadOptions = DEFAULT_LOAD) -> LoadedModel:
        return load_model(spec, Family(AutoModelForImageTextToText, QwenVLProcessor), self.stacks, options)

    def carried_floats(self, config, stack: str, tokens: int) -> tuple[int, int]:
        return hidden_and_rotary_floats(config, tokens)

    def stacks(self, model: nn.Module, components: Sequence[str] | None = None) -> list[Stack]:
        """The language tower's blocks: one stack, or on Qwen3-VL one per DeepStack injection point
        plus the rest, each calibrated from inputs captured in the whole model."""
        model_type = getattr(model.config, "model_type", None)
        if model_type not in LANGUAGE_TOWERS:
            raise ZooError(
                f"cannot find the language tower of {type(model).__name__} (model_type {model_type!r}): "
                f"known Qwen-VL architectures: {', '.join(sorted(LANGUAGE_TOWERS))}"
            )
        unknown = set(components or COMPONENTS) - set(COMPONENTS)
        if unknown:
            raise ZooError(
                f"unknown Qwen-VL component(s) {', '.join(sorted(unknown))}; known: {', '.join(COMPONENTS)} "
                "(the vision tower stays dense)"
            )
        path, groups = LANGUAGE_TOWERS[model_type]
        try:
            layers = model.get_submodule(path)
        except AttributeError as exc:
            raise ZooError(
                f"{type(model).__name__} (model_type {model_type!r}) has no language tower at {path}"
            ) from exc
        blocks = [(f"{path}.{i}", block) for i, block in enumerate(layers)]
        injected = len(_config_attr(model.config, DEEPSTACK[model_type])) if model_type in DEEPSTACK else 0
        kinds = layer_kinds(model.config)
        if not injected:
            return [Stack("language", blocks, groups, kinds)]
        bounds = sorted({*range(min(injected, len(blocks)) + 1), len(blocks)})  # a stack ends after each injection
        return [
            Stack(f"language[{a}:{b}]", blocks[a:b], groups, kinds and kinds[a:b])
            for a, b in itertools.pairwise(bounds)
        ]

    def calibration(
        self, loaded: LoadedModel, source: str, n_samples: int, seq_len: int, seed: int, online: bool
    ) -> CalibrationData:
        """One batch per image + question (+ answer, teacher-forced), so no padding enters a Gram.
        Images are downscaled to at most half of `seq_len` tokens; the text is cut at `seq_len`."""
        from zoo.calibration.vision import load_visual_questions, visual_fingerprint

        items = load_visual_questions(source, n_samples, seed, online)
        batches = []
        for item in items:
            inputs = chat_inputs(loaded.processor, [item.image, item.question], item.answer, seq_len, seq_len // 2)
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.model.dtype)
            batches.append({**inputs, "use_cache": False})
        tokens = sum(b["input_ids"].shape[1] for b in batches)
        return CalibrationData(batches, source, visual_fingerprint(items), tokens)

    def check_calibration(self, source: str, online: bool) -> None:
        """Its sets are read with the model's processor: checked when they are read."""

    def save_processor(self, loaded: LoadedModel, out_dir) -> None:
        loaded.processor.save_pretrained(out_dir)

    def evaluate(self, loaded: LoadedModel, spec: ModelSpec, online: bool) -> Results:
        """VLMEvalKit benchmarks by name (MMMU, OCRBench, RealWorldQA, MMStar online; the local
        photo benchmark offline), greedy answers scored without a judge, at most `eval_limit` questions each."""
        from zoo.evaluators.vlm import evaluate_vlm

        key = "eval_sets" if online else "offline_eval_sets"
        names = getattr(spec.defaults, key)
        if not names:
            raise ZooError(f"{spec.name}: the zoo catalogue names no {key} for Qwen-VL")
        budget = spec.defaults.eval_image_tokens
        scores = evaluate_vlm(
            loaded.model,
            loaded.processor,
            functools.partial(chat_inputs, loaded.processor, max_image_tokens=budget),
            names,
            limit=spec.defaults.eval_limit,
            max_new_tokens=spec.defaults.eval_max_new_tokens,
        )
        return Results(scores=scores)


def _config_attr(config, dotted: str):
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


ADAPTER = QwenVL()
