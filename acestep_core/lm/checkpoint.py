"""Load the 5 Hz LM and its tokenizer from our LM folder or an official (transformers) one.

Loading never materialises random weights: the model is built on the meta device and
`load_state_dict(strict=True, assign=True)` adopts the memory-mapped safetensors tensors; an official
folder is converted in memory by `acestep_core.convert.lm` first (`write_lm_checkpoint` saves that once).
"""

from __future__ import annotations

import os

import torch

from ..convert import lm as lm_convert
from ..safetensors_io import CheckpointError, read_safetensors
from .config import is_lm_config, read_lm_config
from .model import Qwen3LM
from .tokenizer import LMTokenizer

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def load_lm(path: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32) -> tuple[Qwen3LM, LMTokenizer]:
    """(model in eval mode on `device` in `dtype`, tokenizer) from an LM folder of either layout."""
    path = os.fspath(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, DTYPES))}, got {dtype!r}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a folder (expected a 5 Hz LM folder such as "
                              "checkpoints/acestep-5Hz-lm-1.7B, or one written by python -m weights_convert)")
    if is_lm_config(path):
        config = read_lm_config(path)
        tensors = read_safetensors(os.path.join(path, "lm.safetensors"))
        tokenizer_path = os.path.join(path, "tokenizer.json")
    else:
        config, tensors, tokenizer_path = lm_convert.convert_lm_folder(path)
    tokenizer = LMTokenizer.from_file(tokenizer_path)
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {len(tokenizer)} tokens but vocab_size is "
                              f"{config.vocab_size}")
    lm_convert.check_lm_tensors(tensors, config, path)  # names the first missing / extra / misshapen key
    with torch.device("meta"):
        model = Qwen3LM(config)
    model.load_state_dict(tensors, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model, tokenizer
