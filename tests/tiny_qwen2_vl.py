"""A tiny random Qwen2-VL saved to a local directory the way a released checkpoint is: the model
(``save_pretrained``), a processor made of the real ``Qwen2VLImageProcessor`` / video processor and a
byte-level BPE tokenizer trained here with the ``tokenizers`` library (Qwen2-VL's special tokens, a chat
template), and a generation config. No hub is touched: ``from_pretrained(path)`` / ``AutoProcessor``
load it offline, so the real-weights code path (hub id or local dir) can be tested end to end.

Weights are random: whatever it answers is a pipeline check, never accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Qwen2-VL's special tokens, in the order the tokenizer numbers them after the trained vocabulary
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
           "<|image_pad|>", "<|video_pad|>"]  # fmt: skip

# Written for this project: a ChatML prompt with Qwen2-VL's vision markers around each image / video.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Is there a cat in the image? Please answer yes or no.",
    "Is there a person in this picture? Answer the question using a single word or phrase.",
    "Which object is shown in the image? A. a rocket B. a cup of coffee C. a cat D. a coin",
    "Answer with the option's letter from the given choices directly.",
    "Yes No A B C D yes no the a an of in on is are what which where who how many",
    "You are a helpful assistant.",
]


def train_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on a few prompts, with Qwen2-VL's special tokens and chat
    template, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    fast.padding_side = "left"
    return fast


def save_tiny_qwen2_vl(path: str | Path, *, layers: int = 2, vision_depth: int = 6, seed: int = 0) -> Path:
    """Save a tiny random ``Qwen2VLForConditionalGeneration`` with its processor into ``path`` (created).

    The image processor keeps images small (``min_pixels``/``max_pixels`` of 8x8 to 16x16 patches) so a
    photo costs a few dozen visual tokens. The generation config decodes greedily and suppresses the
    special tokens a random model would otherwise emit, so answers are non-empty and repeatable.
    Returns ``path``.
    """
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    pixels = dict(min_pixels=8 * 8 * 14 * 14, max_pixels=16 * 16 * 14 * 14)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=vision_depth, embed_dim=64, num_heads=4, hidden_size=64, mlp_ratio=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random init (std 0.02) barely moves the residual stream: make blocks matter
        for p in model.model.visual.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    model.generation_config = GenerationConfig(
        do_sample=False,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        suppress_tokens=[i for t, i in ids.items() if t != "<|im_end|>"],
        max_new_tokens=8,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_qwen_for_vllm(path: str | Path, family: str = "qwen2_vl", *, seed: int = 0) -> Path:
    """Save a tiny random Qwen2-VL (``family="qwen2_vl"``) or Qwen2.5-VL (``"qwen2_5_vl"``) that vLLM's CPU build
    serves: as :func:`save_tiny_qwen2_vl`, but with text head_dim 64 (vLLM's CPU attention refuses some head sizes,
    e.g. 16 or 24), the ``architectures`` field vLLM resolves the model class by, and images of 4x4 to 16x16
    patches. Qwen2.5-VL's tower has window attention (windows of 4x4 patches) with blocks 2 and 5 attending per
    image. Returns ``path``."""
    from transformers import GenerationConfig, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model
        from transformers import Qwen2VLProcessor as Processor

        vision = dict(depth=6, embed_dim=64, num_heads=4, hidden_size=128, mlp_ratio=2)
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model
        from transformers import Qwen2_5_VLProcessor as Processor

        vision = dict(depth=6, hidden_size=64, num_heads=4, intermediate_size=96, out_hidden_size=128,
                      window_size=56, fullatt_block_indexes=[2, 5])  # fmt: skip
    else:
        raise ValueError(f"family={family!r} is not allowed: use 'qwen2_vl' or 'qwen2_5_vl'")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    pixels = dict(min_pixels=4 * 4 * 14 * 14, max_pixels=16 * 16 * 14 * 14)
    processor = Processor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    cfg = Config(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 10000.0},
        ),
        vision_config=dict(vision, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Model(cfg).eval()
    with torch.no_grad():  # random init (std 0.02) barely moves the residual stream: make blocks matter
        for p in model.model.visual.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    model.generation_config = GenerationConfig(
        do_sample=False, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], max_new_tokens=8
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
