"""Checkpoint folders on disk: recognising a layout, and reading and writing ours.

Our layout is one folder:

    config.json                   format_version + one section per component (config.py)
    <component>.safetensors       one file per entry of components.COMPONENTS, our parameter names
                                  (text_encoder, vae with weight norm folded, dit, condition, audio_tokenizer,
                                  audio_detokenizer)
    silence_latent.safetensors    key "silence_latent", [1, T, 64] time-major
    tokenizer.json                the caption / lyric tokenizer
    quantization.json             only in a quantized folder: {"scheme": "int8", "components": [...]}; those
                                  components' Linear weights are int8 with `<name>.weight_scale` (quantize.py)

The official (`checkpoints/acestep-v15-*`, `vae/`, `Qwen3-Embedding-0.6B/`) and diffusers (`model_index.json`)
layouts are only recognised here; converting them is `acestep_core.convert`. This module is the one reader
and the one writer of our folder, for the converter, the loader and the demo model alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from .components import COMPONENTS, build_module
from .config import AceStepConfig, load_config, save_config
from .safetensors_io import (
    TOKENIZER_LIMIT,
    CheckpointError,
    read_json_bounded,
    read_safetensors,
    read_text_bounded,
    write_safetensors,
)
from .quantize import QUANTIZED_COMPONENTS, SCHEMES, linear_weight_keys, quantize_state_dict
from .text import parse_tokenizer

LAYOUTS = ("ours", "official", "diffusers")
SILENCE_FILE = "silence_latent.safetensors"
TOKENIZER_FILE = "tokenizer.json"
QUANTIZATION_FILE = "quantization.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FINGERPRINT_SAMPLE = 1 << 20  # bytes hashed from each end of a large file


@dataclass
class Converted:
    """A whole checkpoint in our names, in memory (read from our folder, or converted from another layout)."""

    config: AceStepConfig
    components: dict[str, dict[str, torch.Tensor]]  # component -> our key -> tensor
    silence_latent: torch.Tensor  # [1, T, 64]
    tokenizer_json: str  # path to the tokenizer.json it came with
    source: str  # "ours", "official", "diffusers" or "loaded"
    # component -> {our key: the key in the source file}, for error messages.
    origins: dict[str, dict[str, str]] = field(default_factory=dict)
    # The files and folders read; a destination may not equal, contain or lie inside any of them.
    inputs: tuple[str, ...] = ()
    quantize: str | None = None  # "int8": the QUANTIZED_COMPONENTS hold int8 Linear weights and scales


@dataclass
class LoadedCheckpoint:
    """What the loader returns: built modules on their device, ready to run."""

    config: AceStepConfig
    modules: dict[str, nn.Module]
    silence_latent: torch.Tensor  # [1, T, 64]
    tokenizer_json: str


def read_json(path: str) -> dict:
    """A JSON object from a bounded read; every failure a one-line CheckpointError naming the file."""
    try:
        return read_json_bounded(path)
    except ValueError as e:  # missing, not a regular file, over the limit, not UTF-8, not a JSON object
        raise CheckpointError(str(e)) from None


def detect_layout(path: str, variant: str | None = None) -> tuple[str, str]:
    """-> (layout, root): "ours" / "diffusers" (root = the folder) or "official" (root = the model folder)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a folder")
    cfg_path = os.path.join(path, "config.json")
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return "diffusers", path
    if os.path.isfile(cfg_path):
        cfg = read_json(cfg_path)
        if "format_version" in cfg:
            return "ours", path
        if cfg.get("model_type") == "acestep" or "model_version" in cfg:
            return "official", path
    # An official checkpoints/ folder: pick the model folder by variant.
    models = sorted(d for d in os.listdir(path) if d.startswith("acestep-v15") and os.path.isdir(os.path.join(path, d)))
    if models:
        if variant is not None:
            wanted = [d for d in models if d.replace("_", "-").endswith(variant.replace("_", "-"))]
            if not wanted:
                raise CheckpointError(f"{path}: no acestep-v15 folder for variant {variant!r} (found: {', '.join(models)})")
            return "official", os.path.join(path, wanted[0])
        if len(models) == 1:
            return "official", os.path.join(path, models[0])
        if "acestep-v15-turbo" in models:
            return "official", os.path.join(path, "acestep-v15-turbo")
        raise CheckpointError(f"{path}: several models ({', '.join(models)}); choose one with --variant")
    raise CheckpointError(f"{path}: not an ACE-Step checkpoint (no config.json, model_index.json or acestep-v15-* folder)")


def load_tokenizer(tokenizer_json: str):
    """A bounded read of tokenizer.json -> a tokenizers.Tokenizer; every failure a one-line CheckpointError."""
    try:
        return parse_tokenizer(read_text_bounded(tokenizer_json, TOKENIZER_LIMIT, "tokenizer file"), tokenizer_json)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def copy_tokenizer(tokenizer_json: str, dst: str) -> None:
    """Copy tokenizer.json byte for byte, through the same bounded read (never an endless device)."""
    try:
        text = read_text_bounded(tokenizer_json, TOKENIZER_LIMIT, "tokenizer file")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    with open(dst, "w", encoding="utf-8", newline="") as f:  # newline="": no line-ending translation
        f.write(text)


def read_ours(root: str) -> Converted:
    """Our folder -> its config and (memory-mapped) tensors; the tokenizer is parsed once to fail early."""
    config = load_config(root)
    components = {c: read_safetensors(os.path.join(root, c + ".safetensors")) for c in COMPONENTS}
    silence_path = os.path.join(root, SILENCE_FILE)
    silence = read_safetensors(silence_path)
    if "silence_latent" not in silence:
        raise CheckpointError(f"{silence_path}: missing key 'silence_latent'")
    tokenizer_json = os.path.join(root, TOKENIZER_FILE)
    load_tokenizer(tokenizer_json)
    quantize = None
    if os.path.exists(os.path.join(root, QUANTIZATION_FILE)):
        quantize = _read_quantization(os.path.join(root, QUANTIZATION_FILE))
    return Converted(config, components, silence["silence_latent"], tokenizer_json, "ours", inputs=(root,),
                     quantize=quantize)


def _read_quantization(path: str) -> str:
    """quantization.json -> its scheme; anything but what write_ours writes is an error naming the file."""
    data = read_json(path)
    if data != {"scheme": data.get("scheme"), "components": list(QUANTIZED_COMPONENTS)} or data["scheme"] not in SCHEMES:
        raise CheckpointError(f"{path}: expected {{\"scheme\": one of {list(SCHEMES)}, \"components\": "
                              f"{list(QUANTIZED_COMPONENTS)}}}, got {data}")
    return data["scheme"]


def write_ours(conv: Converted, folder: str, *, dtype: str | None = None, quantize: str | None = None,
               progress=None) -> None:
    """Write `conv` into `folder` (which exists and is empty; the caller makes the write atomic).

    dtype: "fp32" / "bf16" / "fp16" for every floating tensor, None keeps them. quantize="int8": the Linear
    weights of QUANTIZED_COMPONENTS as int8 codes with float32 scales. progress(name) after each file.
    """
    if quantize is not None and quantize not in SCHEMES:
        raise ValueError(f"quantize must be None or one of {SCHEMES}, got {quantize!r}")
    if conv.quantize is not None and quantize not in (None, conv.quantize):
        raise ValueError(f"the source is already quantized ({conv.quantize}); it cannot be re-quantized as {quantize}")
    quantize = quantize or conv.quantize
    target = DTYPES[dtype] if dtype else None
    save_config(conv.config, os.path.join(folder, "config.json"))
    for name in COMPONENTS:
        tensors = conv.components[name]
        if quantize is not None and conv.quantize is None and name in QUANTIZED_COMPONENTS:
            # From the source precision, before any dtype change: the scales stay float32.
            tensors = quantize_state_dict(tensors, linear_weight_keys(build_module(name, conv.config, "meta")))
        if target is not None:
            # Only floating tensors change precision (int8 codes stay); scales keep float32.
            tensors = {k: v.to(target) if v.is_floating_point() and not k.endswith(".weight_scale") else v
                       for k, v in tensors.items()}
        write_safetensors(tensors, os.path.join(folder, name + ".safetensors"))
        if progress is not None:
            progress(name)
    write_safetensors({"silence_latent": conv.silence_latent}, os.path.join(folder, SILENCE_FILE))
    copy_tokenizer(conv.tokenizer_json, os.path.join(folder, TOKENIZER_FILE))
    if quantize is not None:
        with open(os.path.join(folder, QUANTIZATION_FILE), "w", encoding="utf-8") as f:
            json.dump({"scheme": quantize, "components": list(QUANTIZED_COMPONENTS)}, f)


def fingerprint(folders: list[str], salt: str = "") -> str:
    """A cheap identity of the checkpoint files in `folders`: sha256 over every (non-hidden) file's relative
    name, size and first and last MiB (the whole file when smaller), plus `salt`. Reading gigabytes on every
    run would be too slow; this tells checkpoints, conversions, dtypes and edited configs apart, but is no
    integrity check (a bit flipped mid-file goes unseen)."""
    h = hashlib.sha256(salt.encode())
    for index, folder in enumerate(folders):
        root = os.path.abspath(folder)
        files = []
        for base, dirs, names in os.walk(root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(base, n) for n in names if not n.startswith(".")]
        for path in sorted(files):
            size = os.path.getsize(path)
            h.update(f"{index}/{os.path.relpath(path, root)}\0{size}\0".encode())  # the folder's own name may vary
            with open(path, "rb") as f:
                h.update(f.read(FINGERPRINT_SAMPLE))
                if size > 2 * FINGERPRINT_SAMPLE:
                    f.seek(size - FINGERPRINT_SAMPLE)
                    h.update(f.read(FINGERPRINT_SAMPLE))
                elif size > FINGERPRINT_SAMPLE:
                    h.update(f.read())
    return "sha256:" + h.hexdigest()[:16]
