"""Frozen configuration dataclasses, one per model, and the one function that builds them.

Our checkpoint folder holds a single `config.json`:

    {"format_version": 1,
     "text_encoder": {...}, "vae": {...}, "dit": {...}, "condition": {...},
     "audio_tokenizer": {...}, "pipeline": {...}}

Each section maps one-to-one onto a dataclass below. `from_dict` refuses any missing or unknown
key, so a typo in a hand-edited config fails at load time with the key and file named, instead of
silently falling back to a default. Source configs (official / diffusers / transformers) are read by
`acestep_core.convert`, never here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass

from .safetensors_io import read_json_bounded

FORMAT_VERSION = 2  # 2: pipeline.padding_side (the text tokenizer's configured side)
ATTENTION_KINDS = ("full", "sliding")
PADDING_SIDES = ("left", "right")
# The official handler's token limits (it truncates; we refuse longer texts, see docs/parity.md row 23).
TEXT_MAX_TOKENS = 256
LYRIC_MAX_TOKENS = 2048
# Integer fields that may be 0 (every other integer is a size or a count of at least 1).
_MAY_BE_ZERO = {"pad_token_id"}


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
    # The side the checkpoint's tokenizer_config.json pads on. The official handler always right-pads;
    # diffusers pads on this side, so compat="diffusers" reads it (docs/parity.md).
    padding_side: str

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
        # Every integer is a size, a count or a token id: a negative one (or a zero size) would only fail
        # later, deep inside a module constructor or a tensor op.
        lowest = 0 if where.rsplit(".", 1)[-1] in _MAY_BE_ZERO else 1
        if value < lowest:
            raise ConfigError(f"{where}: must be at least {lowest}, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        # Every float is a norm epsilon or a RoPE base: NaN, inf, 0 or a negative value gives NaN outputs.
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{where}: must be a finite number > 0, got {value!r}")
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
    built = cls(**{n: _coerce(data[n], hints[n], f"{where}.{n}") for n in names})
    _check_choices(built, where)
    return built


def _check_choices(config, where: str) -> None:
    """String fields with a closed set of values."""
    for kind in getattr(config, "layer_types", ()):
        if kind not in ATTENTION_KINDS:
            raise ConfigError(f"{where}.layer_types: {kind!r} is not one of {ATTENTION_KINDS}")
    side = getattr(config, "padding_side", None)
    if side is not None and side not in PADDING_SIDES:
        raise ConfigError(f"{where}.padding_side: {side!r} is not one of {PADDING_SIDES}")


def from_dict(cls: type[_T], data: dict, source: str = "<dict>") -> _T:
    """Build config dataclass `cls` from a JSON-like dict; any missing/unknown key is a ConfigError."""
    return _build(cls, data, source)


LATENT_RATE = 25  # latent frames per second: what the DiT, the 5 Hz codes and the planner were trained at


def check_consistency(config: AceStepConfig, where: str) -> None:
    """Widths and rates the components share must agree; a mismatch would otherwise fail deep inside torch
    on the first request (or silently relabel the audio's sample rate)."""
    vae, dit = config.vae, config.dit
    if vae.sampling_rate != LATENT_RATE * vae.hop_length:
        raise ConfigError(f"{where}: vae.sampling_rate {vae.sampling_rate} Hz with hop {vae.hop_length} gives "
                          f"{vae.sampling_rate / vae.hop_length:g} latent frames per second; the DiT runs at "
                          f"{LATENT_RATE} (48000 Hz with hop 1920)")
    pairs = (
        ("vae.latent_channels (decoder input)", vae.latent_channels, "dit.latent_dim", dit.latent_dim),
        ("dit.in_channels", dit.in_channels, "3 * dit.latent_dim", 3 * dit.latent_dim),
        ("condition.timbre_hidden_dim", config.condition.timbre_hidden_dim, "dit.latent_dim", dit.latent_dim),
        ("audio_tokenizer.latent_dim", config.audio_tokenizer.latent_dim, "dit.latent_dim", dit.latent_dim),
        ("condition.text_hidden_dim", config.condition.text_hidden_dim, "text_encoder.hidden_size",
         config.text_encoder.hidden_size),
        ("pipeline.pad_token_id", config.pipeline.pad_token_id, "text_encoder.vocab_size - 1",
         config.text_encoder.vocab_size - 1),
    )
    for name_a, a, name_b, b in pairs:
        bad = a > b if name_a == "pipeline.pad_token_id" else a != b
        if bad:
            relation = "must not exceed" if name_a == "pipeline.pad_token_id" else "must equal"
            raise ConfigError(f"{where}: the components disagree: {name_a} = {a} {relation} {name_b} = {b}")


def vae_encoder_mismatch(config: AceStepConfig) -> str | None:
    """Why this checkpoint's VAE cannot encode audio for its DiT, or None. Not fatal at load: text2music only
    decodes (the official tiny test checkpoint has a 2-channel encoder beside a 64-channel DiT)."""
    width = config.vae.encoder_hidden_size // 2  # the encoder emits mean and scale
    if width == config.dit.latent_dim:
        return None
    return (f"the components disagree: the vae encoder makes {width}-channel latents "
            f"(vae.encoder_hidden_size = {config.vae.encoder_hidden_size}) but the dit takes {config.dit.latent_dim} "
            f"(dit.latent_dim), so tasks that encode audio (src_audio, reference_audio) cannot run on this checkpoint")


def to_dict(config) -> dict:
    """The JSON form of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def load_config(path: str | os.PathLike) -> AceStepConfig:
    """Read our checkpoint's `config.json` (a folder or the file itself)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        data = read_json_bounded(path)
    except ValueError as e:  # missing, not a regular file, over the limit, not UTF-8, not a JSON object
        raise ConfigError(str(e)) from None
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version is {version!r}, this library reads {FORMAT_VERSION}")
    return _build(AceStepConfig, data, path)


def save_config(config: AceStepConfig, path: str | os.PathLike) -> None:
    data = {"format_version": FORMAT_VERSION, **to_dict(config)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


# --- named presets: the real sizes of the released checkpoints ------------------------------------------------
# Values read from the official config.json files (tests/test_convert.py checks each preset against the
# config the converter derives from the real checkpoints' key lists). The encoders of every variant share
# one shape; the XL DiTs are wider and deeper.

_QWEN3_EMBEDDING_06B = Qwen3Config(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_layers=28,
                                   num_heads=16, num_kv_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6)
_OOBLECK_48K = OobleckConfig(audio_channels=2, sampling_rate=48000, encoder_hidden_size=128, decoder_channels=128,
                             latent_channels=64, channel_multiples=(1, 2, 4, 8, 16),
                             downsampling_ratios=(2, 4, 4, 6, 10))
_SHAPES = {  # DiT (hidden, intermediate, heads, layers) per family
    "2B": (2048, 6144, 16, 24),
    "XL": (2560, 9728, 32, 32),
}
PRESET_NAMES = ("turbo", "base", "sft", "xl-turbo", "xl-base", "xl-sft")
QWEN3_PAD_TOKEN_ID = 151643  # <|endoftext|> in the Qwen3 tokenizer


def preset(name: str) -> AceStepConfig:
    """The AceStepConfig of a released ACE-Step 1.5 checkpoint ("turbo", "base", "sft", "xl-turbo", ...)."""
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESET_NAMES}")
    xl = name.startswith("xl-")
    hidden, inter, heads, layers = _SHAPES["XL" if xl else "2B"]
    layer_types = ("sliding", "full") * (layers // 2)
    encoder = EncoderStackConfig(hidden_size=2048, intermediate_size=6144, num_heads=16, num_kv_heads=8, head_dim=128,
                                 rope_theta=1e6, rms_norm_eps=1e-6, sliding_window=128, layer_types=layer_types)
    dit = DiTConfig(hidden_size=hidden, intermediate_size=inter, num_heads=heads, num_kv_heads=8, head_dim=128,
                    rope_theta=1e6, rms_norm_eps=1e-6, sliding_window=128, layer_types=layer_types, patch_size=2,
                    in_channels=192, latent_dim=64, condition_dim=2048)
    condition = ConditionConfig(encoder=encoder, text_hidden_dim=1024, timbre_hidden_dim=64, num_lyric_layers=8,
                                num_timbre_layers=4, active_layer_limit=layers, timbre_prepend_cls=xl,
                                timbre_fix_frame=750)
    tokenizer = AudioTokenizerConfig(encoder=encoder, latent_dim=64, pool_window_size=5, fsq_levels=(8, 8, 8, 5, 5, 5),
                                     num_pooler_layers=2)
    pipeline = PipelineConfig(model_version=name.replace("-", "_"), text_max_tokens=TEXT_MAX_TOKENS,
                              lyric_max_tokens=LYRIC_MAX_TOKENS, pad_token_id=QWEN3_PAD_TOKEN_ID, padding_side="left")
    return AceStepConfig(text_encoder=_QWEN3_EMBEDDING_06B, vae=_OOBLECK_48K, dit=dit, condition=condition,
                         audio_tokenizer=tokenizer, pipeline=pipeline)
