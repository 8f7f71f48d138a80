"""Tokenization of caption prompts and lyric texts into right-padded id batches.

The official handler (`acestep/core/generation/handler/conditioning_text.py`) calls the transformers
tokenizer once per item with `truncation=True, max_length=256` (captions) or `max_length=2048` (lyrics)
and default arguments otherwise, then right-pads the items to the batch maximum with the tokenizer's pad
id (`<|endoftext|>`) and the mask with 0. This module does the same with the `tokenizers` library alone:

- Special tokens: whatever `tokenizer.json`'s post-processor adds, exactly like transformers' default
  `add_special_tokens=True`. The prompts already spell `<|endoftext|>` themselves; a Qwen3 tokenizer with
  no post-processor adds nothing (no BOS, no EOS). Note that the current upstream Qwen3-Embedding
  `tokenizer.json` has a post-processor that appends `<|endoftext|>`; whichever file is used, the ids
  equal what the official code gets from the same file.
- Truncation keeps the first tokens (transformers' default right-side truncation) and drops the rest
  silently: a caption prompt longer than 256 tokens loses its end (the Metas lines and the closing
  `<|endoftext|>\\n`), a lyric text longer than 2048 tokens loses its last lines and its closing
  `<|endoftext|>`. Tokens added by the post-processor are kept: the text is cut shorter to make room.
  We log a warning when that happens; the official code does not.
"""

from __future__ import annotations

import logging
import os

import torch
from tokenizers import Tokenizer

from .safetensors_io import TOKENIZER_LIMIT, read_text_bounded

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
CAPTION_MAX_TOKENS = 256
LYRIC_MAX_TOKENS = 2048


def parse_tokenizer(text: str, path: str) -> Tokenizer:
    """The text of a tokenizer.json (read with `read_text_bounded`) -> a Tokenizer; errors are one line."""
    if not text.strip():
        raise ValueError(f"{path}: the tokenizer file is empty")
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # the tokenizers library raises a bare Exception with serde's message
        raise ValueError(f"{path}: not a valid tokenizer.json ({str(e).strip().splitlines()[0][:200]})") from None


class TextTokenizer:
    """Qwen3 tokenizer wrapper. `path`: a `tokenizer.json` file or a folder that holds one."""

    def __init__(self, path: str | os.PathLike, *, pad_token_id: int | None = None,
                 caption_max_tokens: int = CAPTION_MAX_TOKENS, lyric_max_tokens: int = LYRIC_MAX_TOKENS):
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        try:
            text = read_text_bounded(path, TOKENIZER_LIMIT, "tokenizer file")
        except ValueError as e:
            raise ValueError(f"path must be a tokenizer.json file or a folder holding one: {e}") from None
        self.tokenizer = parse_tokenizer(text, path)
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if pad_token_id is None:
            pad_token_id = self.tokenizer.token_to_id(PAD_TOKEN)
            if pad_token_id is None:
                raise ValueError(f"pad_token_id: {path} has no {PAD_TOKEN!r} token; pass pad_token_id explicitly")
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or not 0 <= pad_token_id < vocab:
            raise ValueError(f"pad_token_id must be an int in [0, {vocab}), got {pad_token_id!r}")
        self.pad_token_id = pad_token_id
        # Tokens the post-processor adds to a single sequence; truncation leaves room for them.
        self.num_special = self.tokenizer.num_special_tokens_to_add(is_pair=False)
        for name, value in (("caption_max_tokens", caption_max_tokens), ("lyric_max_tokens", lyric_max_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= self.num_special:
                raise ValueError(f"{name} must be an int > {self.num_special} (the special tokens added), "
                                 f"got {value!r}")
        self.caption_max_tokens = caption_max_tokens
        self.lyric_max_tokens = lyric_max_tokens

    def count(self, text: str) -> int:
        """Number of tokens `text` encodes to, special tokens included, before any truncation."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) + self.num_special

    def encode(self, text: str, max_tokens: int) -> list[int]:
        """One text -> its ids, at most `max_tokens` of them (see the module docstring for truncation)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        room = max_tokens - self.num_special
        if len(enc.ids) > room:
            log.warning("text of %d tokens truncated to %d (+%d special): %.40r...", len(enc.ids), room,
                        self.num_special, text)
            enc.truncate(room, direction="right")
        return self.tokenizer.post_process(enc, add_special_tokens=True).ids

    def batch(self, texts: list[str], max_tokens: int, padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize each text alone, pad to the longest -> ids [B, L] int64, mask [B, L] int64 (1 = real).

        The official handler pads on the right; diffusers pads on the left (the Qwen tokenizer's
        padding side), which `padding_side="left"` reproduces for `compat="diffusers"`.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
            raise ValueError("texts must be a non-empty list of str")
        seqs = [self.encode(t, max_tokens) for t in texts]
        for i, s in enumerate(seqs):
            if not s:
                raise ValueError(f"texts[{i}] encodes to no tokens")
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.int64)
        mask = torch.zeros((len(seqs), length), dtype=torch.int64)
        for i, s in enumerate(seqs):
            span = slice(0, len(s)) if padding_side == "right" else slice(length - len(s), length)
            ids[i, span] = torch.tensor(s, dtype=torch.int64)
            mask[i, span] = 1
        return ids, mask

    def encode_captions(self, prompts: list[str], padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
        """Formatted caption prompts (`prompts.format_caption`) -> ids, mask [B, L], truncated at 256 tokens."""
        return self.batch(prompts, self.caption_max_tokens, padding_side)

    def encode_lyrics(self, lyric_texts: list[str], padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
        """Formatted lyric texts (`prompts.format_lyrics`) -> ids, mask [B, L], truncated at 2048 tokens."""
        return self.batch(lyric_texts, self.lyric_max_tokens, padding_side)
