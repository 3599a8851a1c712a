"""A byte-level BPE tokenizer trained locally, carrying the released InternVL3 special tokens and chat template.

The ordinary vocabulary is trained on a small embedded corpus and padded to `base_vocab` entries, so the
special tokens land right after it, in the released order (for the real-shape presets at their real ids,
151643 onwards).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen2's pre-tokenizer split (contractions, letters, single digits, punctuation runs, newlines, spaces).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5-VL's added tokens (151643..151664), then InternVL's (151665..151673), in the released order.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]

# The chat template of the InternVL3 -hf releases: an image part becomes `<IMG_CONTEXT>\n` and a video part
# `<video>\n`; the processor expands both into `<img>` + context tokens + `</img>` (per frame for videos).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)

EXTRA_SPECIAL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def _corpus() -> list[str]:
    text = (Path(__file__).with_name("corpus.txt")).read_text(encoding="utf-8")
    return text.splitlines()


def train_bpe(base_vocab: int) -> Tokenizer:
    """Train on the embedded corpus, then pad the vocabulary to exactly `base_vocab` ordinary tokens."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(base_vocab, 2048),
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    vocab = tokenizer.get_vocab()
    if len(vocab) > base_vocab:
        raise ValueError(f"trained vocabulary ({len(vocab)}) exceeds base_vocab={base_vocab}")
    # Filler entries have no merge that produces them, so the tokenizer never emits them; they only move the
    # special tokens to their released ids. A random model may still generate one, so each decodes to text
    # (" w123": byte-level "Ġ" is the space).
    model = tokenizer.model
    merges = [tuple(m) for m in _merges(tokenizer)]
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    full = {tok: i for i, (tok, _) in enumerate(ordered)}
    for i in range(len(full), base_vocab):
        full[f"\u0120w{i}"] = i
    padded = Tokenizer(models.BPE(vocab=full, merges=merges, byte_fallback=False))
    padded.normalizer = tokenizer.normalizer
    padded.pre_tokenizer = tokenizer.pre_tokenizer
    padded.decoder = tokenizer.decoder
    del model
    return padded


def _merges(tokenizer: Tokenizer) -> list[list[str]]:
    import json

    data = json.loads(tokenizer.to_str())
    return [m if isinstance(m, list) else m.split(" ") for m in data["model"]["merges"]]


def build_tokenizer(base_vocab: int, model_max_length: int):
    """A transformers Qwen2 tokenizer with the InternVL3 special tokens, eos/pad and chat template."""
    from transformers import Qwen2TokenizerFast

    backend = train_bpe(base_vocab)
    # Added first and in order, so each special token gets its released id.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok = Qwen2TokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=model_max_length,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        extra_special_tokens=EXTRA_SPECIAL_TOKENS,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
