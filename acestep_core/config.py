"""Frozen configuration dataclasses, one per model, and the one function that builds them.

Our checkpoint folder holds a single `config.json`:

    {"format_version": 1,
     "text_encoder": {...}, "vae": {...}, "dit": {...}, "condition": {...},
     "audio_tokenizer": {...}, "pipeline": {...}}

Each section maps one-to-one onto a dataclass below. `from_dict` refuses any missing or unknown
key, so a typo in a hand-edited config fails at load time with the key and file named, instead of
silently falling back to a default. Source configs (official / diffusers / transformers) are read by
`weights_convert`, never here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass

from .safetensors_io import CONFIG_LIMIT, read_text_bounded

FORMAT_VERSION = 1
ATTENTION_KINDS = ("full", "sliding")


class ConfigError(ValueError):
    """A config file or section is malformed. The message names the key and the file."""


@dataclass(frozen=True)
class Qwen3Config:
    """Qwen3 decoder stack used as the caption encoder (Qwen3-Embedding-0.6B)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int  # 128 in the real model, which is NOT hidden_size / num_heads
    rope_theta: float
    rms_norm_eps: float


@dataclass(frozen=True)
class OobleckConfig:
    """Oobleck VAE (diffusers AutoencoderOobleck hyper-parameters)."""

    audio_channels: int
    sampling_rate: int
    encoder_hidden_size: int  # encoder output width = 2 * latent channels (mean, scale)
    decoder_channels: int
    latent_channels: int  # decoder input width (64)
    channel_multiples: tuple[int, ...]
    downsampling_ratios: tuple[int, ...]

    @property
    def hop_length(self) -> int:
        hop = 1
        for r in self.downsampling_ratios:
            hop *= r
        return hop


@dataclass(frozen=True)
class EncoderStackConfig:
    """Shape of a bidirectional pre-norm transformer stack (lyric / timbre encoders, pooler, detokenizer).

    `layer_types[i]` is the attention kind of layer i ("full" or "sliding"); the official code indexes
    the DiT's layer_types list by layer index for every stack, so this list is the DiT's.
    """

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    sliding_window: int
    layer_types: tuple[str, ...]


@dataclass(frozen=True)
class DiTConfig:
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    sliding_window: int
    layer_types: tuple[str, ...]  # one entry per DiT layer: "full" or "sliding"
    patch_size: int
    in_channels: int  # noisy latents + source latents + chunk mask = 3 * latent_dim
    latent_dim: int
    condition_dim: int  # width of the packed condition sequence (encoder width; differs on XL)

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)


@dataclass(frozen=True)
class ConditionConfig:
    encoder: EncoderStackConfig
    text_hidden_dim: int  # Qwen3 hidden size of the caption states
    timbre_hidden_dim: int  # latent channels of the reference audio
    num_lyric_layers: int
    num_timbre_layers: int
    # The official lyric/timbre encoders run `layers[:num_hidden_layers]` with the DiT's layer count.
    active_layer_limit: int
    timbre_prepend_cls: bool  # XL variants prepend the learned CLS token; turbo/base do not
    timbre_fix_frame: int  # reference-audio length in latent frames (750 = 30 s)


@dataclass(frozen=True)
class AudioTokenizerConfig:
    """FSQ audio tokenizer (25 Hz latents -> 5 Hz codes) and its detokenizer."""

    encoder: EncoderStackConfig
    latent_dim: int
    pool_window_size: int
    fsq_levels: tuple[int, ...]
    num_pooler_layers: int  # also the detokenizer's layer count


@dataclass(frozen=True)
class PipelineConfig:
    model_version: str  # "turbo", "base", "sft", "xl_turbo", "xl_base", "xl_sft"
    text_max_tokens: int
    lyric_max_tokens: int
    pad_token_id: int

    @property
    def is_turbo(self) -> bool:
        return "turbo" in self.model_version


@dataclass(frozen=True)
class AceStepConfig:
    """Everything in one checkpoint folder."""

    text_encoder: Qwen3Config
    vae: OobleckConfig
    dit: DiTConfig
    condition: ConditionConfig
    audio_tokenizer: AudioTokenizerConfig
    pipeline: PipelineConfig


_T = typing.TypeVar("_T")


def _coerce(value, annotation, where: str):
    """Turn JSON values into the annotated field type (lists -> tuples, nested dicts -> dataclasses)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return _build(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_type, _) = typing.get_args(annotation)
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} at {where}")


def _build(cls: type[_T], data: dict, where: str) -> _T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(names)})")
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r}")
    return cls(**{n: _coerce(data[n], hints[n], f"{where}.{n}") for n in names})


def from_dict(cls: type[_T], data: dict, source: str = "<dict>") -> _T:
    """Build config dataclass `cls` from a JSON-like dict; any missing/unknown key is a ConfigError."""
    return _build(cls, data, source)


def to_dict(config) -> dict:
    """The JSON form of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def load_config(path: str | os.PathLike) -> AceStepConfig:
    """Read our checkpoint's `config.json` (a folder or the file itself)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        text = read_text_bounded(path, CONFIG_LIMIT, "config file")
    except ValueError as e:  # missing, not a regular file, over the limit, not UTF-8
        raise ConfigError(str(e)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version is {version!r}, this library reads {FORMAT_VERSION}")
    return _build(AceStepConfig, data, path)


def save_config(config: AceStepConfig, path: str | os.PathLike) -> None:
    data = {"format_version": FORMAT_VERSION, **to_dict(config)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
