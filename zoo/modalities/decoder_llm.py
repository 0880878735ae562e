"""Decoder-only LLMs (Llama, Qwen2/3, Mistral, Gemma, OPT, SmolLM): what to compress and how to feed it.

Architecture knowledge sits in the two tables below; embeddings and lm_head stay dense,
as in the paper.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from zoo.compression.targets import CalibrationData, Stack
from zoo.errors import ZooError
from zoo.evaluators.scores import Results, Score
from zoo.modalities.base import hidden_and_rotary_floats, layer_kinds
from zoo.sources.assets import cache_dir
from zoo.sources.catalogue import ModelSpec
from zoo.sources.loading import DEFAULT_LOAD, Family, LoadedModel, LoadOptions, load_model

log = logging.getLogger(__name__)

OFFLINE_TEXT = "wiki-offline"
# Calibration rows replayed per forward: equal-length rows need no mask, and four at once
# replay a block about 15% faster than one at a time on CPU (SmolLM2, 512 tokens).
CALIBRATION_ROWS = 4
# Self-chat conversations generated per calibration token asked for: one per this many tokens (a
# prompt, half of them on a passage, and an answer of at most 128 tokens take about 200 in
# SmolLM2's and Qwen2.5's templates).
SELF_CHAT_TOKENS = 128

_LLAMA_LIKE = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["self_attn.o_proj"],
    ["mlp.gate_proj", "mlp.up_proj"],
    ["mlp.down_proj"],
]
# model_type -> projections of one decoder block, grouped by the input they share.
TARGET_GROUPS = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "opt": [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.out_proj"],
        ["fc1"],
        ["fc2"],
    ],
}
# model_type -> where the decoder blocks sit, when not at model.layers.
BLOCK_PATHS = {"opt": "model.decoder.layers"}


class DecoderLLM:
    modality = "llm"
    auto_class = "AutoModelForCausalLM"
    distills = True

    def load(self, spec: ModelSpec, options: LoadOptions = DEFAULT_LOAD) -> LoadedModel:
        from zoo.sources.converters.gguf import packaged_llm_dir

        family = Family(AutoModelForCausalLM, AutoTokenizer, packaged_llm_dir, "4-bit GGUF, dequantized")
        return load_model(spec, family, self.stacks, options)

    def stacks(self, model: nn.Module, components: Sequence[str] | None = None) -> list[Stack]:
        if components and list(components) != ["decoder"]:
            raise ZooError(f"a decoder LLM has one component, 'decoder'; got {', '.join(components)}")
        model_type = model.config.model_type
        if model_type not in TARGET_GROUPS:
            raise ZooError(
                f"architecture {model_type!r} ({type(model).__name__}) has no compression "
                f"targets table; known: {', '.join(sorted(TARGET_GROUPS))}"
            )
        path = BLOCK_PATHS.get(model_type, "model.layers")
        blocks = [(f"{path}.{i}", block) for i, block in enumerate(model.get_submodule(path))]
        return [Stack("decoder", blocks, TARGET_GROUPS[model_type], layer_kinds(model.config))]

    def carried_floats(self, config, stack: str, tokens: int) -> tuple[int, int]:
        return hidden_and_rotary_floats(config, tokens)

    def calibration(
        self, loaded: LoadedModel, source: str, n_samples: int, seq_len: int, seed: int, online: bool
    ) -> CalibrationData:
        """Token windows of a text set, or of conversations in the model's chat template (a chat set,
        a local file of them, or self-chat: the model's own answers); `a+b` takes half from each."""
        import torch

        from zoo.calibration.text import dataset_fingerprint

        parts = _parts(source)
        shares = [n_samples // len(parts) + (i < n_samples % len(parts)) for i in range(len(parts))]
        ids = torch.cat(
            [self._windows(loaded, part, n, seq_len, seed, online) for part, n in zip(parts, shares, strict=True) if n]
        )
        batches = [
            {"input_ids": ids[i : i + CALIBRATION_ROWS], "use_cache": False}
            for i in range(0, len(ids), CALIBRATION_ROWS)
        ]
        return CalibrationData(batches, source, dataset_fingerprint(ids), ids.numel())

    def _windows(self, loaded: LoadedModel, source: str, n_samples: int, seq_len: int, seed: int, online: bool):
        from zoo.calibration import chat
        from zoo.calibration.text import calibration_batches, token_windows

        if not chat.is_chat_source(source):
            return calibration_batches(loaded.processor, source, n_samples, seq_len, seed, online)
        if source == chat.SELF_CHAT:
            if loaded.weights is not None:
                raise ZooError(
                    f"{chat.SELF_CHAT} calibration generates with the whole model, and this run streams its "
                    "weights from disk: pass --calibration with a text or chat set, or --no-stream"
                )
            count = max(chat.GENERATION_BATCH, -(-n_samples * seq_len // SELF_CHAT_TOKENS))
            identity = f"{loaded.base_model}@{loaded.revision or _weights_digest(loaded.model)}"
            conversations = chat.self_chat(loaded.model, loaded.processor, count, seed, identity)
        else:
            conversations = chat.load_conversations(source, online)
        texts = chat.rendered(loaded.processor, conversations, source)
        return token_windows(loaded.processor, texts, n_samples, seq_len, seed, source)

    def check_calibration(self, source: str, online: bool) -> None:
        """A local chat file's conversations are checked before any weights load."""
        from zoo.calibration import chat

        for part in _parts(source):
            if chat.is_chat_source(part) and part not in chat.CHAT_SETS and part != chat.SELF_CHAT:
                chat.load_conversations(part, online)

    def save_processor(self, loaded: LoadedModel, out_dir) -> None:
        loaded.processor.save_pretrained(out_dir)

    def evaluate(self, loaded: LoadedModel, spec: ModelSpec, online: bool) -> Results:
        """Perplexity on each held-out text of `eval_texts` (the test splits of WikiText-2 and C4, the
        SVD-LLM protocol; at most `eval_windows` windows each), then the zero-shot lm-eval tasks of
        the catalogue (at most `eval_limit` items each); offline, the Hub's texts give way to the
        shipped articles' test split and the Hub's tasks to local ones. A chat model also answers the
        chat prompts (zoo.evaluators.generation): its results then carry its answers too."""
        from zoo.calibration.text import CALIBRATION_SETS
        from zoo.evaluators.generation import chat_results
        from zoo.evaluators.lm_eval_tasks import LOCAL_TASKS, build_local_tasks, run_lm_eval
        from zoo.evaluators.perplexity import perplexity

        texts = list(spec.defaults.eval_texts)
        if not online and any(t in CALIBRATION_SETS for t in texts):
            offline = list(dict.fromkeys(OFFLINE_TEXT if t in CALIBRATION_SETS else t for t in texts))
            log.warning("Hub offline: perplexity texts %s replaced by %s", texts, offline)
            texts = offline
        metrics = {}
        for source in texts:
            result = perplexity(
                loaded.model,
                loaded.processor,
                _evaluation_text(source, online),
                seq_len=spec.defaults.eval_seq_len,
                max_windows=spec.defaults.eval_windows,
            )
            metrics[f"perplexity/{source}"] = {"perplexity": Score(value=result["perplexity"])}
        tasks = list(spec.defaults.eval_tasks)
        if not online and any(t not in LOCAL_TASKS for t in tasks):
            log.warning("Hub offline: zero-shot tasks %s replaced by local %s", tasks, LOCAL_TASKS)
            tasks = list(LOCAL_TASKS)
        if tasks:
            include = None
            if any(t in LOCAL_TASKS for t in tasks):
                include = str(build_local_tasks(_evaluation_texts(), cache_dir() / "lm-eval-tasks"))
            metrics.update(
                run_lm_eval(loaded.model, loaded.processor, tasks, include_path=include, limit=spec.defaults.eval_limit)
            )
        chat = chat_results(loaded.model, loaded.processor, spec.defaults)
        return Results(scores={**metrics, **chat.scores}, answers=chat.answers)


def _parts(source: str) -> list[str]:
    """The sets a calibration source names: `self-chat+wiki-offline` is two (a path is one, `+` or not)."""
    from pathlib import Path

    return [source] if Path(source).expanduser().exists() else source.split("+")


def _weights_digest(model: nn.Module) -> str:
    """What names an in-memory model's weights when no revision does: its input embeddings."""
    from zoo.digest import digest

    table = model.get_input_embeddings().weight.detach()
    return digest([table.float().cpu().numpy().tobytes()])


@functools.cache
def _evaluation_text(source: str, online: bool) -> str:
    from zoo.calibration.text import evaluation_text

    return evaluation_text(source, online)


@functools.cache
def _evaluation_texts() -> list[str]:
    """The offline test articles, never seen in calibration, for the local zero-shot tasks."""
    from zoo.calibration.text import load_texts

    return load_texts(OFFLINE_TEXT, "test")


ADAPTER = DecoderLLM()
