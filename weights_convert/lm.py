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

import json
import os
import shutil

import torch

from acestep_core.lm.config import LMConfig, write_lm_config
from acestep_core.lm.model import Qwen3LM
from acestep_core.lm.tokenizer import LMTokenizer
from acestep_core.safetensors_io import read_state_dict, write_safetensors

from . import convert  # a module reference: acestep_core imports this file while convert.py may be mid-import

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
                raise convert.ConversionError(f"{where}: missing key {key!r}")
            return default
        return cfg[key]

    def expect(key, default, allowed):
        value = get(key, default)
        if value not in allowed:
            raise convert.ConversionError(f"{where}: {key}={value!r} is not supported (expected one of {allowed!r})")

    expect("model_type", None, ("qwen3",))
    expect("hidden_act", "silu", ("silu",))
    expect("attention_bias", False, (False,))
    expect("rope_scaling", None, (None,))
    expect("tie_word_embeddings", True, (True,))  # an untied head would need its own weight
    if cfg.get("use_sliding_window"):
        raise convert.ConversionError(f"{where}: use_sliding_window=true is not supported")
    if any(t != "full_attention" for t in cfg.get("layer_types") or []):
        raise convert.ConversionError(f"{where}: only full-attention layers are supported, got {cfg['layer_types']!r}")
    rope_theta = get("rope_theta", None)
    if rope_theta is None:  # transformers 5 writes rope settings under rope_parameters
        rope_theta = (get("rope_parameters", None) or {}).get("rope_theta")
        if rope_theta is None:
            raise convert.ConversionError(f"{where}: missing key 'rope_theta'")
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
        raise convert.ConversionError(f"{where}: unknown key {unknown[0]!r}; it is neither read nor in the "
                                      "documented ignore list (weights_convert/lm.py IGNORED)")
    return config


def _check_tied_head(state_dict: dict[str, torch.Tensor], where: str) -> None:
    head, embed = state_dict.get("lm_head.weight"), state_dict.get("model.embed_tokens.weight")
    if head is not None and embed is not None and not torch.equal(head, embed):
        raise convert.ConversionError(f"{where}: lm_head.weight differs from model.embed_tokens.weight; "
                                      "only a tied head is supported")


def check_lm_tensors(tensors: dict[str, torch.Tensor], config: LMConfig, where: str) -> None:
    """Exactly our model's parameters, each with the shape `config` implies."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Qwen3LM(config).state_dict().items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise convert.ConversionError(f"{where}: missing key {missing[0]!r}{more}")
    if extra:
        raise convert.ConversionError(f"{where}: unexpected key {extra[0]!r}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise convert.ConversionError(f"{where}: {key} has shape {tuple(tensors[key].shape)}, "
                                          f"the config implies {shape}")


def convert_lm_folder(src: str | os.PathLike) -> tuple[LMConfig, dict[str, torch.Tensor], str]:
    """An official LM folder -> (config, tensors with our names, path of its tokenizer.json), in memory."""
    src = os.fspath(src)
    config_path = os.path.join(src, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            source = json.load(f)
    except FileNotFoundError:
        raise convert.ConversionError(f"{config_path}: file not found (not an LM folder)") from None
    except json.JSONDecodeError as e:
        raise convert.ConversionError(f"{config_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(source, dict):
        raise convert.ConversionError(f"{config_path}: expected a JSON object")
    config = lm_config_from_transformers(source, config_path)
    tokenizer_path = os.path.join(src, "tokenizer.json")
    tokenizer = LMTokenizer.from_file(tokenizer_path)  # ValueError when the audio-code tokens are missing
    if len(tokenizer) > config.vocab_size:
        raise convert.ConversionError(f"{src}: the tokenizer has {len(tokenizer)} tokens but vocab_size is "
                                      f"{config.vocab_size}")
    state_dict = read_state_dict(src, "model")
    _check_tied_head(state_dict, src)
    tensors = convert.rename_keys(state_dict, {"lm": KEYS}, src)["lm"]
    check_lm_tensors(tensors, config, src)
    return config, tensors, tokenizer_path


def write_lm_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Convert the official LM folder `src` into our layout in folder `dst` (created); returns dst."""
    config, tensors, tokenizer_path = convert_lm_folder(src)
    dst = os.fspath(dst)
    os.makedirs(dst, exist_ok=True)
    write_safetensors(tensors, os.path.join(dst, "lm.safetensors"))
    shutil.copyfile(tokenizer_path, os.path.join(dst, "tokenizer.json"))
    write_lm_config(config, os.path.join(dst, "config.json"))  # last: a folder with a config is complete
    return dst
