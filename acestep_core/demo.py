"""A tiny random ACE-Step model in our checkpoint layout, for trying the pipeline without real weights.

It has the real audio geometry (48 kHz stereo, hop 1920, 64 latent channels, 5 Hz FSQ codes) and tiny
widths, so every code path runs in seconds on a CPU. It sounds like noise: the weights are random.
`write_demo_checkpoint` writes the folder with the same writer the converter uses, so loading it goes
through the real loader.

The VAE encoder is the one part that cannot be made tiny: its width is also its output width (2 x 64
latent channels = 128), and its first block runs at the full 48 kHz rate. Putting the largest stride first
(10, 6, 4, 4, 2 instead of the real 2, 4, 4, 6, 10; same hop 1920) and keeping every later block at that
width halves the encoding time (cover, repaint, reference audio); what is left, about 0.5 CPU-core-seconds
per second of audio, is that first block. Text-to-music never encodes audio.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from .checkpoint import Converted
from .components import COMPONENTS, build_module, expected_shapes
from .config import (
    LYRIC_MAX_TOKENS,
    TEXT_MAX_TOKENS,
    AceStepConfig,
    AudioTokenizerConfig,
    ConditionConfig,
    DiTConfig,
    EncoderStackConfig,
    OobleckConfig,
    PipelineConfig,
    Qwen3Config,
    to_dict,
)
from .convert.convert import write_checkpoint
from .hub import cache_dir
from .version import __version__

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def demo_config(model_version: str = "turbo", vocab_size: int = 259) -> AceStepConfig:
    layers = ("sliding", "full", "sliding", "full")
    stack = EncoderStackConfig(hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=8,
                               rope_theta=1e6, rms_norm_eps=1e-6, sliding_window=16, layer_types=layers)
    return AceStepConfig(
        text_encoder=Qwen3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                                 num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e6, rms_norm_eps=1e-6),
        vae=OobleckConfig(audio_channels=2, sampling_rate=48000, encoder_hidden_size=128, decoder_channels=4,
                          latent_channels=64, channel_multiples=(1, 1, 1, 1, 1), downsampling_ratios=(10, 6, 4, 4, 2)),
        dit=DiTConfig(hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=1e6,
                      rms_norm_eps=1e-6, sliding_window=16, layer_types=layers, patch_size=2, in_channels=192,
                      latent_dim=64, condition_dim=32),
        condition=ConditionConfig(encoder=stack, text_hidden_dim=32, timbre_hidden_dim=64, num_lyric_layers=2,
                                  num_timbre_layers=2, active_layer_limit=4, timbre_prepend_cls=False,
                                  timbre_fix_frame=750),
        audio_tokenizer=AudioTokenizerConfig(encoder=stack, latent_dim=64, pool_window_size=5,
                                             fsq_levels=(8, 8, 8, 5, 5, 5), num_pooler_layers=2),
        pipeline=PipelineConfig(model_version=model_version, text_max_tokens=TEXT_MAX_TOKENS, lyric_max_tokens=LYRIC_MAX_TOKENS,
                                pad_token_id=256, padding_side="left"),
    )


def demo_tokenizer():
    """A byte-level tokenizer (256 byte tokens + the Qwen special tokens): any text encodes, nothing to download."""
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def write_demo_checkpoint(path: str, *, model_version: str = "turbo", seed: int = 0) -> str:
    """Random tiny weights (seeded, so the demo is reproducible) written in our layout at `path`."""
    tok = demo_tokenizer()
    config = demo_config(model_version, vocab_size=tok.get_vocab_size())
    if tok.token_to_id("<|endoftext|>") != config.pipeline.pad_token_id:
        raise RuntimeError("demo tokenizer: <|endoftext|> is not the configured pad id")
    gen = torch.Generator().manual_seed(seed)
    components = {}
    for name in COMPONENTS:
        module = build_module(name, config)
        tensors = {}
        for key, value in module.state_dict().items():
            noise = torch.randn(value.shape, generator=gen)
            if value.dim() >= 2:
                # Matrices and kernels: std 1 / sqrt(fan-in) (fan-in counted as PyTorch's default init does,
                # dims 1..), so activations keep their scale through the deep VAE and fp16 does not overflow.
                tensors[key] = noise / value[0].numel() ** 0.5
            elif bool((value == 1).all()):
                tensors[key] = 1.0 + 0.1 * noise  # norm gains (ones at init) stay near 1
            else:
                tensors[key] = 0.1 * noise  # biases, Snake log-scales
        components[name] = tensors
    silence = 0.5 * torch.randn(1, 1500, 64, generator=gen)
    # The writer copies tokenizer.json from a file; a temporary one outside `path` (whose parent may not exist yet).
    fd, tmp_tok = tempfile.mkstemp(prefix="acestep-demo-tokenizer-", suffix=".json")
    os.close(fd)
    try:
        tok.save(tmp_tok)
        write_checkpoint(Converted(config, components, silence, tmp_tok, "demo"), path, force=True)
    finally:
        os.remove(tmp_tok)
    return path


def demo_checkpoint() -> str:
    """The demo checkpoint in the acestep-core cache (`hub.cache_dir()`), written on first use, reused after.

    The folder name carries a digest of this file, the config and every parameter shape, so a changed
    recipe or model definition gets a fresh folder instead of a stale one. Concurrent first runs are safe:
    each writes a private folder and renames it into place; a loser of the race uses the winner's.
    """
    config = demo_config(vocab_size=demo_tokenizer().get_vocab_size())
    with open(__file__, "rb") as f:
        recipe = f.read()
    shapes = {c: sorted(expected_shapes(c, config).items()) for c in COMPONENTS}
    digest = hashlib.sha256(recipe + json.dumps([to_dict(config), shapes]).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir(), f"demo-{__version__}-{digest}")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    os.makedirs(cache_dir(), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".demo-", dir=cache_dir())
    try:
        write_demo_checkpoint(os.path.join(scratch, "demo"))
        try:
            os.rename(os.path.join(scratch, "demo"), path)
        except OSError:
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path
