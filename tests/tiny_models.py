"""Tiny random decoder configs shared by the fast tests."""

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

# The dimensions every tiny decoder shares: two blocks, grouped-query attention, a 160-wide MLP.
TINY_DIMS = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY_DIMS, tie_word_embeddings=True)).eval()


def tiny_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**TINY_DIMS)).eval()


def tiny_gemma3(seed: int = 0):
    """Gemma 3's two kinds of layers, sliding window (4 tokens, less than a batch) and full attention,
    each with its own rotary table."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    kinds = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    config = Gemma3TextConfig(
        **{**TINY_DIMS, "num_hidden_layers": len(kinds)}, head_dim=16, sliding_window=4, layer_types=kinds
    )
    return Gemma3ForCausalLM(config).eval()


def token_batches(n: int = 6, seq_len: int = 24, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 128, (1, seq_len), generator=g), "use_cache": False} for _ in range(n)]


def tiny_tokenizer():
    """A word-level tokenizer over a few sentences, saved with the tiny models' folders."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = (
        "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing "
        "matches in london and paris during cold winter evenings with hot tea"
    ).split()
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)] * 3, trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def tiny_calibration(n: int = 6, seq_len: int = 24, seed: int = 0):
    from zoo.modalities.base import CalibrationData

    return CalibrationData(token_batches(n, seq_len, seed), "random-tokens", f"seed{seed}", n * seq_len)


END, START = "<|im_end|>", "<|im_start|>"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ["user", "assistant"] + [f"w{i}" for i in range(123)]  # with the 3 special tokens: the tiny vocab of 128


def tiny_chat_tokenizer():
    """A word-level tokenizer with a ChatML template over the tiny models' 128 ids; end-of-turn is id 0,
    so a model whose logits are all equal (argmax: the first) ends its turn at once."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=[END, START, "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token=END, pad_token=END)
    tokenizer.chat_template = TEMPLATE
    assert len(tokenizer) == 128 and tokenizer.eos_token_id == 0
    return tokenizer


def saved_with_texts(root: Path, name: str, tokenizer, text: str, lines: int) -> tuple[Path, Path]:
    """A tiny Llama and `tokenizer` saved as the folder `root/name`, and `lines` copies of `text` as
    a local JSONL calibration set beside it."""
    base, texts = root / name, root / "calib.jsonl"
    tiny_llama().save_pretrained(base)
    tokenizer.save_pretrained(base)
    texts.write_text("\n".join(json.dumps({"text": text}) for _ in range(lines)))
    return base, texts
