"""Write a diffusers `AceStepPipeline` folder from our layout, an official checkpoint or a diffusers folder.

The folder `AceStepPipeline.from_pretrained` reads:

    model_index.json          pipeline class + (library, class) of each component
    transformer/              AceStepTransformer1DModel    config.json + diffusion_pytorch_model.safetensors
    condition_encoder/        AceStepConditionEncoder      (its file also holds the `silence_latent` buffer)
    audio_tokenizer/          AceStepAudioTokenizer
    audio_token_detokenizer/  AceStepAudioTokenDetokenizer
    vae/                      AutoencoderOobleck           (weight-norm pairs: X.weight_g / X.weight_v)
    text_encoder/             transformers Qwen3Model      config.json + model.safetensors
    tokenizer/                tokenizer.json + tokenizer_config.json
    scheduler/                FlowMatchEulerDiscreteScheduler  scheduler_config.json

Tensor names are the inverse of `keymaps.DIFFUSERS` (see `keymaps.invert_table`), not a second table; every
config.json is built from our `AceStepConfig`, the inverse of `configs.acestep_from_diffusers` and friends,
so `python -m weights_convert` on the result gives back the same config and tensors, with two exceptions
forced by the diffusers format: the VAE weights come back through weight-norm unfold + fold (equal to float
rounding), and a silence latent shorter than 15000 frames comes back tiled to 15000 (`silence_for_diffusers`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import torch

from ..checkpoint import (
    DTYPES,
    Converted,
    LoadedCheckpoint,
    copy_tokenizer,
    detect_layout,
    load_tokenizer,
    read_ours,
)
from ..components import COMPONENTS
from ..config import AceStepConfig
from ..safetensors_io import CheckpointError, write_safetensors
from . import keymaps
from .convert import ConversionError, check_against_config, convert_checkpoint, rename_keys
from .destination import MARKER, MARKER_CONTENT, check_destination, make_temp_folder, replace_folder
from .keymaps import DIFFUSERS_FOLDERS, invert_table
from .transforms import unfold_all_weight_norms

log = logging.getLogger("weights_convert")

# The diffusers release whose AceStepPipeline these configs were checked against (written as
# `_diffusers_version`; diffusers only logs a note when it differs from the running version).
DIFFUSERS_VERSION = "0.42.1"

# Our component -> (library, class) in model_index.json. `ace_step` is what diffusers' own
# save_pretrained writes for classes that live in its pipelines/ace_step/ folder.
_MODEL_INDEX = {
    "dit": ("diffusers", "AceStepTransformer1DModel"),
    "condition": ("ace_step", "AceStepConditionEncoder"),
    "audio_tokenizer": ("ace_step", "AceStepAudioTokenizer"),
    "audio_detokenizer": ("ace_step", "AceStepAudioTokenDetokenizer"),
    "vae": ("diffusers", "AutoencoderOobleck"),
    "text_encoder": ("transformers", "Qwen3Model"),
}
# PreTrainedTokenizerFast applies tokenizer.json as it is (the same file our tokenizer reads) and needs no
# vocab.json/merges.txt, which our layout does not keep.
_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_ATTENTION_NAMES = {"sliding": "sliding_attention", "full": "full_attention"}
# AceStepConditionEncoder registers its `silence_latent` buffer with exactly this many frames (10 minutes at
# 25 Hz, the length of the released silence_latent.pt) and from_pretrained rejects any other length.
DIFFUSERS_SILENCE_FRAMES = 15000


def silence_for_diffusers(silence: torch.Tensor) -> torch.Tensor:
    """[1, T, C] -> [1, DIFFUSERS_SILENCE_FRAMES, C]: a shorter latent is tiled, as the official tiles it.

    Both pipelines tile the stored silence when they need more frames, so for any T that divides 15000 the
    diffusers pipeline sees the same frames at every length; otherwise only beyond 15000 frames (10 min)
    do they differ. A longer latent would lose frames: an error.
    """
    if silence.dim() != 3 or silence.shape[0] != 1 or silence.shape[1] == 0:
        raise ValueError(f"silence must be [1, T, C] with T >= 1, got {tuple(silence.shape)}")
    frames = silence.shape[1]
    if frames > DIFFUSERS_SILENCE_FRAMES:
        raise ConversionError(f"the silence latent has {frames} frames; diffusers' AceStepConditionEncoder holds "
                              f"exactly {DIFFUSERS_SILENCE_FRAMES}")
    if frames < DIFFUSERS_SILENCE_FRAMES:
        log.warning("silence latent: %d frames tiled to the %d that diffusers' AceStepConditionEncoder holds%s",
                    frames, DIFFUSERS_SILENCE_FRAMES, "" if DIFFUSERS_SILENCE_FRAMES % frames == 0 else
                    " (15000 is not a multiple: beyond 15000 frames the diffusers pipeline tiles differently)")
        repeats = -(-DIFFUSERS_SILENCE_FRAMES // frames)  # ceil division
        silence = silence.repeat(1, repeats, 1)[:, :DIFFUSERS_SILENCE_FRAMES]  # [1, T, C] -> [1, 15000, C]
    return silence.contiguous()


def diffusers_state_dicts(conv: Converted) -> dict[str, dict[str, torch.Tensor]]:
    """Our tensors -> one state dict per diffusers component, keyed by our component name."""
    out = {}
    for name in COMPONENTS:
        table = invert_table(keymaps.TABLES["diffusers"][name])
        out[name] = rename_keys(conv.components[name], {name: table}, f"<{name} -> diffusers>")[name]
    out["vae"] = unfold_all_weight_norms(out["vae"])
    # diffusers keeps the silence latent ([1, T, 64], time-major like ours) as a condition-encoder buffer.
    out["condition"]["silence_latent"] = silence_for_diffusers(conv.silence_latent)
    return out


# --- configs ------------------------------------------------------------------------------------------------

def _meta(class_name: str) -> dict:
    return {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION}


def _attention(stack) -> dict:
    """The attention settings every ACE-Step diffusers class takes; `stack` is a DiT or encoder-stack config."""
    return {
        "num_attention_heads": stack.num_heads, "num_key_value_heads": stack.num_kv_heads,
        "head_dim": stack.head_dim, "rope_theta": stack.rope_theta, "attention_bias": False,
        "rms_norm_eps": stack.rms_norm_eps, "sliding_window": stack.sliding_window,
        "layer_types": [_ATTENTION_NAMES[k] for k in stack.layer_types],
    }


def transformer_config(config: AceStepConfig) -> dict:
    dit = config.dit
    return {
        **_meta(_MODEL_INDEX["dit"][1]),
        "hidden_size": dit.hidden_size, "intermediate_size": dit.intermediate_size,
        "num_hidden_layers": dit.num_layers, **_attention(dit),
        "in_channels": dit.in_channels, "audio_acoustic_hidden_dim": dit.latent_dim, "patch_size": dit.patch_size,
        "encoder_hidden_size": dit.condition_dim,
        # The pipeline reads both to pick its turbo defaults (no CFG, 8 steps); xl_turbo is turbo too.
        "is_turbo": config.pipeline.is_turbo, "model_version": config.pipeline.model_version,
    }


def condition_encoder_config(config: AceStepConfig) -> dict:
    cond = config.condition
    return {
        **_meta(_MODEL_INDEX["condition"][1]),
        "hidden_size": cond.encoder.hidden_size, "intermediate_size": cond.encoder.intermediate_size,
        "text_hidden_dim": cond.text_hidden_dim, "timbre_hidden_dim": cond.timbre_hidden_dim,
        "num_lyric_encoder_hidden_layers": cond.num_lyric_layers,
        "num_timbre_encoder_hidden_layers": cond.num_timbre_layers,
        **_attention(cond.encoder),
    }


def audio_tokenizer_config(config: AceStepConfig) -> dict:
    tok = config.audio_tokenizer
    return {
        **_meta(_MODEL_INDEX["audio_tokenizer"][1]),
        "hidden_size": tok.encoder.hidden_size, "intermediate_size": tok.encoder.intermediate_size,
        "audio_acoustic_hidden_dim": tok.latent_dim, "pool_window_size": tok.pool_window_size,
        "fsq_dim": tok.encoder.hidden_size, "fsq_input_levels": list(tok.fsq_levels), "fsq_input_num_quantizers": 1,
        "num_attention_pooler_hidden_layers": tok.num_pooler_layers,
        **_attention(tok.encoder),
    }


def audio_detokenizer_config(config: AceStepConfig) -> dict:
    tok = config.audio_tokenizer
    return {
        **_meta(_MODEL_INDEX["audio_detokenizer"][1]),
        "hidden_size": tok.encoder.hidden_size, "intermediate_size": tok.encoder.intermediate_size,
        "audio_acoustic_hidden_dim": tok.latent_dim, "pool_window_size": tok.pool_window_size,
        "num_attention_pooler_hidden_layers": tok.num_pooler_layers,
        **_attention(tok.encoder),
    }


def vae_config(config: AceStepConfig) -> dict:
    vae = config.vae
    return {
        **_meta(_MODEL_INDEX["vae"][1]),
        "audio_channels": vae.audio_channels, "sampling_rate": vae.sampling_rate,
        "encoder_hidden_size": vae.encoder_hidden_size, "decoder_channels": vae.decoder_channels,
        "decoder_input_channels": vae.latent_channels, "channel_multiples": list(vae.channel_multiples),
        "downsampling_ratios": list(vae.downsampling_ratios),
    }


def text_encoder_config(config: AceStepConfig) -> dict:
    qwen = config.text_encoder
    return {
        "architectures": [_MODEL_INDEX["text_encoder"][1]], "model_type": "qwen3",
        "vocab_size": qwen.vocab_size, "hidden_size": qwen.hidden_size, "intermediate_size": qwen.intermediate_size,
        "num_hidden_layers": qwen.num_layers, "num_attention_heads": qwen.num_heads,
        "num_key_value_heads": qwen.num_kv_heads, "head_dim": qwen.head_dim, "hidden_act": "silu",
        "attention_bias": False, "rms_norm_eps": qwen.rms_norm_eps, "use_sliding_window": False,
        # transformers 5 reads rope_parameters, 4.x reads rope_theta (and would silently use its default
        # 10000 without it): write both.
        "rope_theta": qwen.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": qwen.rope_theta},
    }


def tokenizer_config(config: AceStepConfig, tokenizer_json: str) -> dict:
    tok = load_tokenizer(tokenizer_json)
    pad = tok.id_to_token(config.pipeline.pad_token_id)
    if pad is None:
        raise CheckpointError(f"{tokenizer_json}: has no token with the pad id {config.pipeline.pad_token_id}")
    out = {
        "tokenizer_class": _TOKENIZER_CLASS,
        "pad_token": pad,
        # The side the source tokenizer_config.json named (config pipeline.padding_side), so that diffusers pads
        # as it would on the source folder and a round trip keeps the config (docs/parity.md row 28).
        "padding_side": config.pipeline.padding_side,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,  # the pipeline truncates itself (256 caption / 2048 lyric tokens)
    }
    # Qwen3's end-of-turn token; the pipeline never uses it, but transformers users expect it set.
    if tok.token_to_id("<|im_end|>") is not None:
        out["eos_token"] = "<|im_end|>"
    return out


def scheduler_config() -> dict:
    # The pipeline computes ACE-Step's (shifted / turbo) sigmas itself and passes them to set_timesteps, and
    # the DiT takes t in [0, 1]: one training timestep (so timesteps == sigmas) and no second shift.
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            "num_train_timesteps": 1, "shift": 1.0}


def model_index() -> dict:
    folders = {DIFFUSERS_FOLDERS[name][0]: list(lib_cls) for name, lib_cls in _MODEL_INDEX.items()}
    return {"_class_name": "AceStepPipeline", "_diffusers_version": DIFFUSERS_VERSION, **folders,
            "tokenizer": ["transformers", _TOKENIZER_CLASS],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}


def _warn_diffusers_differences(config: AceStepConfig) -> None:
    """Settings diffusers 0.42.1 cannot express: the folder is valid, but its pipeline computes differently."""
    cond = config.condition
    default = tuple("sliding" if i % 2 == 0 else "full" for i in range(cond.num_timbre_layers))
    if cond.encoder.layer_types[: cond.num_timbre_layers] != default:
        log.warning("diffusers' timbre encoder ignores layer_types (sliding on even layers, full on odd): "
                    "its timbre embedding will differ from this checkpoint's %s",
                    list(cond.encoder.layer_types[: cond.num_timbre_layers]))
    if cond.timbre_prepend_cls:
        log.warning("diffusers' timbre encoder does not prepend the CLS token that %s checkpoints use: "
                    "its timbre embedding will differ", config.pipeline.model_version)
    if cond.timbre_fix_frame != 750:
        log.warning("diffusers hard-codes a 750-frame reference window; this checkpoint uses %d",
                    cond.timbre_fix_frame)
    if cond.active_layer_limit < max(cond.num_lyric_layers, cond.num_timbre_layers):
        log.warning("diffusers runs every lyric/timbre encoder layer; this checkpoint runs only the first %d",
                    cond.active_layer_limit)


# --- sources and writing ------------------------------------------------------------------------------------

def read_source(src, variant: str | None = None) -> Converted:
    """Our config and tensors from a path (ours / official / diffusers), a `Converted` or a `LoadedCheckpoint`.

    variant: the model folder to pick from an official checkpoints/ folder (as `convert_checkpoint`).
    """
    if isinstance(src, Converted):
        return src
    if isinstance(src, LoadedCheckpoint):
        # Module state dicts may sit on an accelerator; safetensors writes from CPU memory.
        components = {c: {k: v.detach().cpu() for k, v in m.state_dict().items()} for c, m in src.modules.items()}
        return Converted(src.config, components, src.silence_latent.detach().cpu(), src.tokenizer_json, "loaded",
                         inputs=(os.path.dirname(os.path.abspath(src.tokenizer_json)),))
    if isinstance(src, (str, os.PathLike)):
        layout, root = detect_layout(os.fspath(src), variant)
        conv = read_ours(root) if layout == "ours" else convert_checkpoint(os.fspath(src), variant)
        conv.inputs = (os.path.abspath(os.fspath(src)), *conv.inputs)
        return conv
    raise ValueError(f"src must be a checkpoint folder path, a Converted or a LoadedCheckpoint, "
                     f"got {type(src).__name__}")


def _write_json(data: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def write_diffusers(src, dst: str | os.PathLike, *, force: bool = False, dtype: str | None = None,
                    progress=None) -> Converted:
    """Write `src` as a diffusers AceStepPipeline folder at `dst`; returns what was read.

    src: our layout, an official checkpoints/ (or acestep-v15-*) folder, a diffusers folder, a `Converted`
    or a `LoadedCheckpoint`. dtype: "fp32" / "bf16" / "fp16" for every floating tensor except the silence
    latent (kept at its source precision, as `write_checkpoint` does); None keeps the source dtypes.
    (To pick a model from an official checkpoints/ folder that holds several, pass `read_source(path, variant)`.)
    progress: called with each component name once its file is written.
    Written atomically: a temporary folder beside dst, swapped in at the very end. dst is checked first and
    again once the source is read (`destination.check_destination`): an existing dst is an error unless
    force, and force replaces only a folder this tool wrote.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None, got {dtype!r}")
    sources = (src,) if isinstance(src, (str, os.PathLike)) else ()
    check_destination(dst, force=force, sources=sources)
    conv = read_source(src)
    dst = check_destination(dst, force=force, sources=(*conv.inputs, conv.tokenizer_json))
    for name in COMPONENTS:
        check_against_config(conv.components[name], name, conv.config, f"<{conv.source} checkpoint>",
                             conv.origins.get(name), conv.source)
    if conv.silence_latent.dim() != 3 or conv.silence_latent.shape[-1] != conv.config.condition.timbre_hidden_dim:
        raise ConversionError(f"silence latent has shape {tuple(conv.silence_latent.shape)}, "
                              f"expected [1, T, {conv.config.condition.timbre_hidden_dim}]")
    _warn_diffusers_differences(conv.config)
    if dtype is not None:
        # Cast before unfolding the VAE weight norms, so that weight_g is the norm of the stored weight_v.
        target = DTYPES[dtype]
        conv = Converted(conv.config, {c: {k: v.to(target) if v.is_floating_point() else v for k, v in sd.items()}
                                       for c, sd in conv.components.items()},
                         conv.silence_latent, conv.tokenizer_json, conv.source, conv.origins, conv.inputs)
    state_dicts = diffusers_state_dicts(conv)
    configs = {"dit": transformer_config, "condition": condition_encoder_config,
               "audio_tokenizer": audio_tokenizer_config, "audio_detokenizer": audio_detokenizer_config,
               "vae": vae_config, "text_encoder": text_encoder_config}

    tmp = make_temp_folder(dst)
    try:
        _write_json(model_index(), os.path.join(tmp, "model_index.json"))
        _write_json(MARKER_CONTENT, os.path.join(tmp, MARKER))  # lets a later --force recognise the folder
        for name in COMPONENTS:
            folder, stem = DIFFUSERS_FOLDERS[name]
            os.makedirs(os.path.join(tmp, folder))
            _write_json(configs[name](conv.config), os.path.join(tmp, folder, "config.json"))
            # transformers and diffusers both tag their safetensors files with format=pt.
            write_safetensors(state_dicts[name], os.path.join(tmp, folder, stem + ".safetensors"), {"format": "pt"})
            if progress is not None:
                progress(name)
        os.makedirs(os.path.join(tmp, "tokenizer"))
        copy_tokenizer(conv.tokenizer_json, os.path.join(tmp, "tokenizer", "tokenizer.json"))
        _write_json(tokenizer_config(conv.config, conv.tokenizer_json),
                    os.path.join(tmp, "tokenizer", "tokenizer_config.json"))
        os.makedirs(os.path.join(tmp, "scheduler"))
        _write_json(scheduler_config(), os.path.join(tmp, "scheduler", "scheduler_config.json"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, dst)
    return conv
