"""Tiny random Qwen-VL models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with a word-level tokenizer, saved
as model folders the adapter loads like any checkpoint: the fast tests' stand-ins for real
vision-language models, which no package ships.

The tokenizer carries Qwen's chat and vision special tokens, so the processor, the chat template
and the model's mrope position ids see the same token layout as on a real model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

SPECIAL = [
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
WORDS = (
    "what is in the picture photo image a an cat dog rocket coffee cup astronaut coins how many are there "
    "which colour color answer with letter of option options question select correct from above please "
    "system user assistant you helpful text page shows animal object red green blue black white grey one "
    "two three four five many none this is does have show kind hint a b c d yes no"
).split()
# Qwen's chat layout: system turn, then the user's images and text, then the assistant's turn.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nyou are a helpful assistant<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
)
# sum(mrope_section) = head_dim / 2 = 8: rotary frequencies split over time, height and width.
_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
# generation -> (config class, model class, processor class, text config, vision config, patch size)
GENERATIONS = {
    "qwen2_vl": (
        "Qwen2VLConfig",
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLProcessor",
        dict(_TEXT, num_hidden_layers=2, rope_parameters=dict(_MROPE, rope_type="mrope")),
        dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14),
        14,
    ),
    "qwen2_5_vl": (
        "Qwen2_5_VLConfig",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLProcessor",
        dict(_TEXT, num_hidden_layers=2, rope_parameters=dict(_MROPE, rope_type="mrope")),
        dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        14,
    ),
    "qwen3_vl": (
        "Qwen3VLConfig",
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLProcessor",
        dict(_TEXT, num_hidden_layers=3, head_dim=16, rope_parameters=dict(_MROPE, mrope_interleaved=True)),
        dict(
            depth=3,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=16,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0, 1],
        ),
        16,
    ),
}


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=SPECIAL))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_processor(generation: str = "qwen2_vl"):
    """The generation's processor, image-only (this machine has no torchvision for its video processor)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from zoo.modalities.qwen_vl import image_only

    patch = GENERATIONS[generation][5]
    factor = patch * 2  # merge size 2: one language token per 2x2 patches
    images = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=factor * factor * 4,
        max_pixels=factor * factor * 16,
    )
    return image_only(GENERATIONS[generation][2])(
        image_processor=images, tokenizer=tiny_tokenizer(), chat_template=CHAT_TEMPLATE
    )


def tiny_vlm(generation: str = "qwen2_vl", seed: int = 0):
    import transformers

    config_name, model_name, _, text, vision, _ = GENERATIONS[generation]
    tok = tiny_tokenizer()
    ids = {
        name: tok.convert_tokens_to_ids(token)
        for name, token in [
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ]
    }
    text = dict(
        text,
        vocab_size=len(tok),
        bos_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = getattr(transformers, config_name)(text_config=text, vision_config=vision, **ids)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def save_tiny_vlm(folder: Path, generation: str = "qwen2_vl", seed: int = 0) -> Path:
    tiny_vlm(generation, seed).save_pretrained(folder)
    tiny_processor(generation).save_pretrained(folder)
    return folder


def photo(seed: int = 0, size: tuple[int, int] = (96, 128)) -> Image.Image:
    """A smooth random colour image (gradients plus noise), so patches differ from each other."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy - seed), xx * yy], axis=-1)
    pixels = (base + 0.2 * rng.standard_normal((h, w, 3)) + 1.5) / 3.0
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype("uint8"))
