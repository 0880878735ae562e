"""Conversations for calibrating a chat model in the format it is used in: its own chat template.

Online, a chat set from the Hub (`CHAT_SETS`, read through `datasets`); a local file or folder
with a `messages` column (role/content turns) works anywhere. Offline, the model writes its own
("self-chat", as data-free quantization calibrates on what the model generates): its greedy
answers to prompts built from the shipped articles' train split, disjoint from every evaluation
text, generated once per model and kept in the cache under a fingerprint of everything that
shapes them.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from zoo.digest import digest
from zoo.errors import ZooError
from zoo.files import write_text

log = logging.getLogger(__name__)

SELF_CHAT = "self-chat"
ROLES = ("system", "user", "assistant")
Answer = dict  # {"prompt": str, "answer": str, "tokens": list[int]}: JSON as it is
# Self-chat: how many new tokens an answer may take, and prompts generated per batch.
ANSWER_TOKENS = 128
GENERATION_BATCH = 32
_CACHE_VERSION = "v2"  # bump when the prompts or the generation below change
_PASSAGE_CHARS = 1500
_ABOUT = ("Tell me about {title}.", "Write a short paragraph about {title}.", "Give me three facts about {title}.")
_ON_PASSAGE = (
    "Summarize this in two sentences:\n\n{passage}",
    "Explain this to a beginner:\n\n{passage}",
    "What is the main point of this passage?\n\n{passage}",
)


@dataclass(frozen=True)
class ChatSet:
    hub_id: str
    split: str
    field: str = "messages"
    max_docs: int = 5000  # streamed: only the first conversations are read


CHAT_SETS: dict[str, ChatSet] = {
    # Zephyr's SFT mix of UltraChat: multi-turn, role/content messages.
    "ultrachat": ChatSet("HuggingFaceH4/ultrachat_200k", "train_sft"),
}


def is_chat_source(name_or_path: str) -> bool:
    """A chat set's name, or a local dataset whose rows are conversations (a `messages` column)."""
    if name_or_path in CHAT_SETS or name_or_path == SELF_CHAT:
        return True
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        first = next((line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line), "")
        try:
            return isinstance(row := json.loads(first), dict) and "messages" in row
        except json.JSONDecodeError:
            return False
    return False


def check_conversations(rows: list, source: str) -> list[list[dict]]:
    """Each row a non-empty list of {"role", "content"} turns with known roles; else a ZooError
    naming the row and what is missing."""
    for i, turns in enumerate(rows):
        if not isinstance(turns, list) or not turns:
            raise ZooError(f"{source}: conversation {i} is {type(turns).__name__}, not a non-empty list of turns")
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict) or not {"role", "content"} <= set(turn):
                keys = ", ".join(turn) if isinstance(turn, dict) else type(turn).__name__
                raise ZooError(
                    f"{source}: conversation {i}, turn {j} needs 'role' and 'content' (found: {keys}); "
                    "ShareGPT-style 'from'/'value' turns must be converted"
                )
            if turn["role"] not in ROLES or not isinstance(turn["content"], str):
                raise ZooError(
                    f"{source}: conversation {i}, turn {j}: role {turn['role']!r} must be one of "
                    f"{', '.join(ROLES)} and content text"
                )
    return rows


def load_conversations(name_or_path: str, online: bool) -> list[list[dict]]:
    """The conversations of a Hub chat set (needs `online`) or of a local json/jsonl file."""
    if name_or_path in CHAT_SETS:
        import datasets

        spec = CHAT_SETS[name_or_path]
        if not online:
            raise ZooError(
                f"{name_or_path} ({spec.hub_id}) needs the Hugging Face Hub, which is unreachable from here; "
                f"use {SELF_CHAT!r} (the model's own answers) or a local jsonl with a 'messages' column"
            )
        try:
            ds = datasets.load_dataset(spec.hub_id, split=spec.split, streaming=True)
            rows = [row.get(spec.field) for row in ds.take(spec.max_docs)]
        except OSError as exc:
            raise ZooError(f"cannot load {name_or_path} ({spec.hub_id}) from the Hub: {exc}") from exc
        return check_conversations(rows, spec.hub_id)
    path = Path(name_or_path).expanduser()
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ZooError(f"{path}, line {n}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or "messages" not in row:
            raise ZooError(f"{path}, line {n}: no 'messages' field (a list of role/content turns)")
        rows.append(row["messages"])
    return check_conversations(rows, str(path))


def rendered(tokenizer, conversations: list[list[dict]], source: str) -> list[str]:
    """Each conversation as the model reads it: through its own chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ZooError(f"{source} holds conversations, but this model's tokenizer has no chat template")
    return [tokenizer.apply_chat_template(turns, tokenize=False) for turns in conversations]


def self_chat_prompts(count: int, seed: int) -> list[str]:
    """`count` distinct user prompts about the shipped articles' train split (never evaluated on):
    half on a title, half on a passage (a paragraph anywhere in an article), chosen with `seed`."""
    from zoo.calibration.text import offline_articles

    articles = offline_articles("train")
    titles = [re.sub(r"\s*\(.*\)$", "", title) for title, _ in articles]
    paragraphs = [p for _, text in articles for p in text.split("\n") if len(p) >= 200]
    rng = random.Random(seed)
    asked = min(count, len(titles) * len(_ABOUT) + len(paragraphs))
    prompts: dict[str, None] = {}  # distinct, in the order drawn
    while len(prompts) < asked:
        if len(prompts) % 2:
            prompt = rng.choice(_ABOUT).format(title=rng.choice(titles))
        else:
            prompt = rng.choice(_ON_PASSAGE).format(passage=_passage(rng.choice(paragraphs)))
        prompts[prompt] = None
    return list(prompts)


def _passage(text: str) -> str:
    """A paragraph's opening, cut at a sentence end near `_PASSAGE_CHARS`."""
    head = text[:_PASSAGE_CHARS]
    end = head.rfind(". ")
    return head[: end + 1] if end > 100 else head


def self_chat(model, tokenizer, count: int, seed: int, identity: str) -> list[list[dict]]:
    """`count` conversations the model writes itself, from the cache when this model (`identity`:
    what names its weights), its template and these prompts already wrote them."""
    from zoo.sources.assets import cache_dir

    prompts = self_chat_prompts(count, seed)
    key = digest(
        [
            part.encode()
            for part in (_CACHE_VERSION, identity, tokenizer.chat_template or "", str(ANSWER_TOKENS), *prompts)
        ]
    )
    cached = cache_dir() / "self-chat" / f"{key}.jsonl"
    if cached.is_file():
        return load_conversations(str(cached), online=False)
    answers = greedy_answers(model, tokenizer, prompts, ANSWER_TOKENS, desc="self-chat")
    conversations = [
        [{"role": "user", "content": a["prompt"]}, {"role": "assistant", "content": a["answer"]}] for a in answers
    ]
    write_text(cached, "\n".join(json.dumps({"messages": c}, ensure_ascii=False) for c in conversations))
    return conversations


def chat_inputs(tokenizer, prompts: list[str] | tuple[str, ...]) -> list[list[int]]:
    """Each prompt as one user turn in the model's own chat template, ready for the assistant's answer."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # the template has its own


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one left-padded batch and its attention mask."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def end_ids(model, tokenizer) -> list[int]:
    """Every token that ends a turn: the tokenizer's and the generation config's (Qwen lists two)."""
    ends = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends = [] if ends is None else [ends] if isinstance(ends, int) else list(ends)
    if tokenizer.eos_token_id is not None:
        ends.append(tokenizer.eos_token_id)
    return sorted(set(ends))


def model_device(model) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def greedy_answers(
    model, tokenizer, prompts, new_tokens: int, batch: int = GENERATION_BATCH, desc: str = "generate"
) -> list[Answer]:
    """Greedy answers to single-turn prompts in the model's chat template, `new_tokens` at most,
    cut after the first end-of-turn; batched with left padding."""
    from transformers import GenerationConfig

    ends = end_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ends[0]
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=ends, pad_token_id=pad)
    inputs, device, answers = chat_inputs(tokenizer, prompts), model_device(model), []
    for start in tqdm(range(0, len(prompts), batch), desc=desc, unit="batch", disable=len(prompts) <= batch):
        ids, mask = left_padded(inputs[start : start + batch], pad)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for prompt, row in zip(prompts[start : start + batch], out[:, ids.shape[1] :].tolist(), strict=True):
            cut = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
            tokens = row[:cut]
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            answers.append({"prompt": prompt, "answer": text, "tokens": tokens})
    return answers
