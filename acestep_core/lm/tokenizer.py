"""The 5 Hz LM's tokenizer: Qwen3 text tokens, the chat special tokens, and 64000 audio-code tokens.

`tokenizer.json` of an LM folder lists `<|audio_code_0|>` .. `<|audio_code_63999|>` as added tokens right
after the text vocabulary (ids 151669.. in the released models), so code c is token `code_offset + c`.
The official handler encodes prompts with transformers' fast tokenizer (no BOS, special tokens matched as
added tokens) and decodes with `skip_special_tokens=False`; `tokenizers` gives the same ids and text.
"""

from __future__ import annotations

import os
import re

import torch
from tokenizers import Tokenizer

from ..safetensors_io import TOKENIZER_LIMIT, read_text_bounded
from ..text import parse_tokenizer

NUM_AUDIO_CODES = 64000  # FSQ codebook size: codes 0..63999
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
_CODE_RE = re.compile(r"<\|audio_code_(\d+)\|>")


def code_token(code: int) -> str:
    return f"<|audio_code_{code}|>"


class LMTokenizer:
    """tokenizers.Tokenizer plus the ids the planner needs (eos, pad, first code token)."""

    def __init__(self, tokenizer: Tokenizer, where: str = "<tokenizer>"):
        self.raw = tokenizer
        self.where = where
        self.eos_id = self._require(EOS_TOKEN)
        self.pad_id = self._require(PAD_TOKEN)
        first, last = tokenizer.token_to_id(code_token(0)), tokenizer.token_to_id(code_token(NUM_AUDIO_CODES - 1))
        if first is None or last is None:
            raise ValueError(f"{where}: the tokenizer has no audio-code tokens ({code_token(0)} .. "
                             f"{code_token(NUM_AUDIO_CODES - 1)}); this is not a 5 Hz LM tokenizer")
        if last - first != NUM_AUDIO_CODES - 1:
            raise ValueError(f"{where}: the {NUM_AUDIO_CODES} audio-code tokens are not consecutive ids "
                             f"({code_token(0)}={first}, {code_token(NUM_AUDIO_CODES - 1)}={last})")
        self.code_offset = first
        self.size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "LMTokenizer":
        path = os.fspath(path)
        # A bounded read (a regular file under the size limit), then the one tokenizer parser of the library.
        raw = parse_tokenizer(read_text_bounded(path, TOKENIZER_LIMIT, "tokenizer file"), path)
        return cls(raw, path)

    def _require(self, token: str) -> int:
        token_id = self.raw.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{self.where}: the tokenizer has no {token} token")
        return token_id

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str) -> list[int]:
        # No special-token template: the Qwen3 tokenizer adds no BOS, and the chat markers are in the text.
        return self.raw.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.raw.decode(list(ids), skip_special_tokens=False)

    # --- audio codes ---------------------------------------------------------------------------------------

    def codes_to_string(self, codes) -> str:
        """[c0, c1, ...] (0..63999) -> "<|audio_code_c0|><|audio_code_c1|>..."."""
        codes = parse_code_list(codes)
        return "".join(code_token(c) for c in codes)

    def token_ids_to_codes(self, token_ids) -> list[int]:
        """Generated token ids -> code values, keeping only code tokens (as the official output parser does)."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        lo, hi = self.code_offset, self.code_offset + NUM_AUDIO_CODES
        return [t - lo for t in token_ids if lo <= t < hi]

    def pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad id lists with the pad token -> (input_ids [B, L], attention_mask [B, L]), int64.

        This is how the official handler tokenizes the [cond, uncond] CFG pair (padding_side="left").
        """
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = 1
        return ids, mask


def parse_code_string(codes: str) -> list[int]:
    """"<|audio_code_12|><|audio_code_7|>" -> [12, 7]. Raises ValueError for ids past 63999 or no codes."""
    if not isinstance(codes, str):
        raise TypeError(f"audio_codes must be a string of <|audio_code_N|> tokens, got {type(codes).__name__}")
    values = [int(m) for m in _CODE_RE.findall(codes)]
    if not values:
        raise ValueError("audio_codes holds no <|audio_code_N|> tokens")
    return parse_code_list(values)


def parse_code_list(codes) -> list[int]:
    """Check a sequence of code values (list or tensor) lies in 0..63999 and return it as a list of ints."""
    if isinstance(codes, torch.Tensor):
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise TypeError(f"audio codes must be integers, got a {codes.dtype} tensor")
        codes = codes.flatten().tolist()
    codes = list(codes)
    for c in codes:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"audio codes must be integers, got {c!r}")
        if not 0 <= c < NUM_AUDIO_CODES:
            raise ValueError(f"audio code {c} is outside 0..{NUM_AUDIO_CODES - 1}")
    return codes


def code_values(codes: str) -> list[int]:
    """Every <|audio_code_N|> of a string as N (no range check; an empty list when there are none)."""
    return [int(m) for m in _CODE_RE.findall(codes)]
