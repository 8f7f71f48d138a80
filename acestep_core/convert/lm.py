"""Convert an official 5 Hz LM folder (transformers `Qwen3ForCausalLM`) into our LM layout.

Official folder (e.g. `checkpoints/acestep-5Hz-lm-1.7B/`): `config.json`, `model.safetensors` (or shards with
an index), `tokenizer.json` (+ files that carry nothing it lacks). Ours: `config.json` (acestep_core.lm.config),
`lm.safetensors` with our parameter names, `tokenizer.json` copied unchanged.

The key map is the data table `KEYS` (`{}` = a layer index; target None = dropped on purpose). Every source
key must match a rule and every parameter of our model must be produced with the shape the config implies;
anything else is a ConversionError naming the key. The config reader takes the fields it needs, fails on a
missing one, rejects settings we do not implement, and ignores only the keys listed in `IGNORED`.
"""

from __future__ import annotations

import os
import shutil

import torch

from ..checkpoint import DTYPES, copy_tokenizer, read_json
from ..lm.config import FORMAT, LMConfig, write_lm_config
from ..lm.model import Qwen3LM
from ..lm.tokenizer import LMTokenizer
from ..safetensors_io import CheckpointError, read_state_dict, write_safetensors
from .convert import ConversionError, rename_keys
from .destination import check_destination, make_temp_folder, replace_folder

LM_FILES = ("config.json", "lm.safetensors", "tokenizer.json")

_LAYER = [
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
]

KEYS = [
    ("model.embed_tokens.weight", "embed_tokens.weight"),
    ("model.norm.weight", "norm.weight"),
    *[(f"model.layers.{{}}.{name}", f"layers.{{}}.{name}") for name in _LAYER],
    # The head is tied to the embedding (checked in `_check_tied_head`); transformers usually omits it.
    ("lm_head.weight", None),
]

# Keys of a transformers Qwen3 config.json that do not change the forward pass: bookkeeping, token ids and
# generation defaults, dropout (training only), the position limit (a cache bound, not a weight), and the
# sliding-window settings (checked to be off in `lm_config_from_transformers`).
IGNORED = {
    "architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "_name_or_path", "use_cache",
    "initializer_range", "max_position_embeddings", "attention_dropout", "bos_token_id", "eos_token_id",
    "pad_token_id", "max_window_layers", "sliding_window", "layer_types", "use_sliding_window",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript", "is_decoder", "is_encoder_decoder",
    "tokenizer_class", "chunk_size_feed_forward", "pruned_heads", "problem_type", "id2label", "label2id",
    "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_length", "min_length",
    "num_beams", "use_bfloat16",
}


def lm_config_from_transformers(cfg: dict, where: str) -> LMConfig:
    """A transformers Qwen3ForCausalLM config.json -> LMConfig (ConversionError for anything unsupported)."""
    used: set[str] = set()

    def get(key, default=...):
        used.add(key)
        if key not in cfg:
            if default is ...:
                raise ConversionError(f"{where}: missing key {key!r}")
            return default
        return cfg[key]

    def expect(key, default, allowed):
        value = get(key, default)
        if value not in allowed:
            raise ConversionError(f"{where}: {key}={value!r} is not supported (expected one of {allowed!r})")

    expect("model_type", None, ("qwen3",))
    expect("hidden_act", "silu", ("silu",))
    expect("attention_bias", False, (False,))
    expect("rope_scaling", None, (None,))
    expect("tie_word_embeddings", True, (True,))  # an untied head would need its own weight
    if cfg.get("use_sliding_window"):
        raise ConversionError(f"{where}: use_sliding_window=true is not supported")
    if any(t != "full_attention" for t in cfg.get("layer_types") or []):
        raise ConversionError(f"{where}: only full-attention layers are supported, got {cfg['layer_types']!r}")
    rope_theta = get("rope_theta", None)
    if rope_theta is None:  # transformers 5 writes rope settings under rope_parameters
        rope_theta = (get("rope_parameters", None) or {}).get("rope_theta")
        if rope_theta is None:
            raise ConversionError(f"{where}: missing key 'rope_theta'")
    else:
        get("rope_parameters", None)
    heads = get("num_attention_heads")
    config = LMConfig(
        vocab_size=get("vocab_size"), hidden_size=get("hidden_size"), intermediate_size=get("intermediate_size"),
        num_layers=get("num_hidden_layers"), num_heads=heads, num_kv_heads=get("num_key_value_heads", heads),
        head_dim=get("head_dim"), rope_theta=float(rope_theta),
        rms_norm_eps=float(get("rms_norm_eps")),
    )
    unknown = sorted(set(cfg) - used - IGNORED)
    if unknown:
        raise ConversionError(f"{where}: unknown key {unknown[0]!r}; it is neither read nor in the "
                              "documented ignore list (acestep_core/convert/lm.py IGNORED)")
    return config


def _check_tied_head(state_dict: dict[str, torch.Tensor], where: str) -> None:
    head, embed = state_dict.get("lm_head.weight"), state_dict.get("model.embed_tokens.weight")
    if head is not None and embed is not None and not torch.equal(head, embed):
        raise ConversionError(f"{where}: lm_head.weight differs from model.embed_tokens.weight; "
                                      "only a tied head is supported")


def check_lm_tensors(tensors: dict[str, torch.Tensor], config: LMConfig, where: str) -> None:
    """Exactly our model's parameters, each with the shape `config` implies."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Qwen3LM(config).state_dict().items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(f"{where}: missing key {missing[0]!r}{more}")
    if extra:
        raise ConversionError(f"{where}: unexpected key {extra[0]!r}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ConversionError(f"{where}: {key} has shape {tuple(tensors[key].shape)}, "
                                          f"the config implies {shape}")


def convert_lm_folder(src: str | os.PathLike) -> tuple[LMConfig, dict[str, torch.Tensor], str]:
    """An official LM folder -> (config, tensors with our names, path of its tokenizer.json), in memory."""
    src = os.fspath(src)
    config_path = os.path.join(src, "config.json")
    source = read_json(config_path)  # bounded; a one-line CheckpointError when missing or not JSON
    config = lm_config_from_transformers(source, config_path)
    tokenizer_path = os.path.join(src, "tokenizer.json")
    tokenizer = LMTokenizer.from_file(tokenizer_path)  # ValueError when the audio-code tokens are missing
    if len(tokenizer) > config.vocab_size:
        raise ConversionError(f"{src}: the tokenizer has {len(tokenizer)} tokens but vocab_size is "
                                      f"{config.vocab_size}")
    state_dict = read_state_dict(src, "model")
    _check_tied_head(state_dict, src)
    tensors = rename_keys(state_dict, {"lm": KEYS}, src)["lm"]
    check_lm_tensors(tensors, config, src)
    return config, tensors, tokenizer_path


def is_lm_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a 5 Hz LM folder: an official (transformers Qwen3ForCausalLM) one, or ours."""
    config_path = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(config_path):
        return False
    try:
        cfg = read_json(config_path)
    except CheckpointError:
        return False
    return cfg.get("format") == FORMAT or "Qwen3ForCausalLM" in (cfg.get("architectures") or [])


def write_lm_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False, dtype: str | None = None,
                        progress=None) -> str:
    """Convert the official LM folder `src` into our layout at `dst`, atomically and with the destination
    rules of every conversion (destination.py: never a source, the current or home folder, or a folder we did
    not write). dtype: "fp32" / "bf16" / "fp16" for the stored weights, None keeps them. Returns dst."""
    dst = check_destination(dst, force=force, sources=(os.fspath(src),))
    config, tensors, tokenizer_path = convert_lm_folder(src)
    if dtype is not None:
        target = DTYPES[dtype]
        # Only floating tensors change precision (all of the LM's are).
        tensors = {k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()}
    tmp = make_temp_folder(dst)
    try:
        write_safetensors(tensors, os.path.join(tmp, "lm.safetensors"))
        copy_tokenizer(tokenizer_path, os.path.join(tmp, "tokenizer.json"))
        write_lm_config(config, os.path.join(tmp, "config.json"))
        if progress is not None:
            progress("lm")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, dst)
    return dst
