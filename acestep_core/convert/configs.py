"""Build our config dataclasses from the source layouts' config.json files.

Each reader takes exactly the fields it needs and fails on a missing one. Everything else in a source
config must be in the documented IGNORED list for that kind of file (metadata with no effect on the
numerics, or training-only settings); a key in neither place is an error, because a new key in a source
config can change the model and must not be skipped silently. Settings we do not implement (another
activation, attention bias, RoPE scaling, several quantizers) are checked and rejected.
"""

from __future__ import annotations

from ..config import (
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
)

# transformers PretrainedConfig bookkeeping and generation defaults: no effect on a forward pass.
_TRANSFORMERS_META = {
    "architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "model_type", "use_cache",
    "initializer_range", "max_position_embeddings", "return_dict", "output_hidden_states", "output_attentions",
    "torchscript", "pruned_heads", "tie_word_embeddings", "chunk_size_feed_forward", "is_encoder_decoder",
    "is_decoder", "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "finetuning_task",
    "id2label", "label2id", "task_specific_params", "problem_type", "tokenizer_class", "prefix", "bos_token_id",
    "pad_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "num_beam_groups", "diversity_penalty", "_name_or_path", "_attn_implementation_autoset",
    "attention_dropout",  # dropout only acts in training
    "_commit_hash", "name_or_path", "tf_legacy_loss", "use_bfloat16",
}
_DIFFUSERS_META = {"_class_name", "_diffusers_version", "_name_or_path", "attention_dropout"}

IGNORED = {
    # official acestep-v15-*/config.json
    "acestep": _TRANSFORMERS_META | {
        "data_proportion", "timestep_mu", "timestep_sigma",  # training-time timestep sampling
        "vocab_size",  # the 5 Hz LM's vocabulary; the DiT has no token embedding
        "lyric_alignment_layers_config",  # attention-based lyric timing analysis, not generation
        "num_audio_decoder_hidden_layers",  # duplicate of num_hidden_layers in every released config
        "is_turbo",
    },
    "qwen3": _TRANSFORMERS_META | {
        "max_window_layers", "use_sliding_window", "sliding_window",  # checked below: no sliding window in use
        "layer_types", "vocab_size_padded",
    },
    "oobleck": _DIFFUSERS_META,
    # diffusers component configs
    "diffusers_transformer": _DIFFUSERS_META | {"is_turbo"},
    "diffusers_encoder": _DIFFUSERS_META,
}


class SourceConfigError(ValueError):
    pass


def _reader(cfg: dict, kind: str, where: str):
    used: set[str] = set()

    def get(key, default=...):
        used.add(key)
        if key not in cfg:
            if default is ...:
                raise SourceConfigError(f"{where}: missing key {key!r}")
            return default
        return cfg[key]

    def finish():
        unknown = sorted(set(cfg) - used - IGNORED[kind])
        if unknown:
            raise SourceConfigError(
                f"{where}: unknown key {unknown[0]!r}; it is neither read nor in the documented ignore list "
                f"(weights_convert/configs.py IGNORED[{kind!r}])"
            )

    return get, finish


def _expect(where: str, key: str, value, allowed) -> None:
    if value not in allowed:
        raise SourceConfigError(f"{where}: {key}={value!r} is not supported (expected one of {allowed!r})")


def _layer_kinds(layer_types, use_sliding_window: bool, where: str) -> tuple[str, ...]:
    kinds = []
    for t in layer_types:
        _expect(where, "layer_types[]", t, ("sliding_attention", "full_attention"))
        # Without use_sliding_window the official sets sliding_window=None, i.e. every layer attends fully.
        kinds.append("sliding" if t == "sliding_attention" and use_sliding_window else "full")
    return tuple(kinds)


def _default_layer_types(n: int) -> list[str]:
    # Both the official config and diffusers default to sliding on even layers, full on odd ones.
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]


def qwen3_from_transformers(cfg: dict, where: str) -> Qwen3Config:
    get, finish = _reader(cfg, "qwen3", where)
    _expect(where, "hidden_act", get("hidden_act", "silu"), ("silu",))
    _expect(where, "attention_bias", get("attention_bias", False), (False,))
    _expect(where, "rope_scaling", get("rope_scaling", None), (None,))
    if cfg.get("use_sliding_window"):
        raise SourceConfigError(f"{where}: use_sliding_window=true is not supported for the text encoder")
    rope_theta = get("rope_theta", None)
    if rope_theta is None:  # transformers 5 writes rope settings under rope_parameters
        rope_theta = (get("rope_parameters") or {}).get("rope_theta")
        if rope_theta is None:
            raise SourceConfigError(f"{where}: missing key 'rope_theta'")
    else:
        get("rope_parameters", None)
    heads = get("num_attention_heads")
    out = Qwen3Config(
        vocab_size=get("vocab_size"),
        hidden_size=get("hidden_size"),
        intermediate_size=get("intermediate_size"),
        num_layers=get("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=get("num_key_value_heads", heads),
        head_dim=get("head_dim"),
        rope_theta=float(rope_theta),
        rms_norm_eps=float(get("rms_norm_eps")),
    )
    finish()
    return out


def oobleck_from_diffusers(cfg: dict, where: str) -> OobleckConfig:
    get, finish = _reader(cfg, "oobleck", where)
    out = OobleckConfig(
        audio_channels=get("audio_channels"),
        sampling_rate=get("sampling_rate"),
        encoder_hidden_size=get("encoder_hidden_size"),
        decoder_channels=get("decoder_channels"),
        latent_channels=get("decoder_input_channels"),
        channel_multiples=tuple(get("channel_multiples")),
        downsampling_ratios=tuple(get("downsampling_ratios")),
    )
    finish()
    return out


def _stack(get, hidden, inter, heads, kv_heads, layer_kinds) -> EncoderStackConfig:
    return EncoderStackConfig(
        hidden_size=hidden, intermediate_size=inter, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=get("head_dim"), rope_theta=float(get("rope_theta")), rms_norm_eps=float(get("rms_norm_eps")),
        sliding_window=get("sliding_window"), layer_types=layer_kinds,
    )


def acestep_from_official(cfg: dict, where: str) -> tuple[DiTConfig, ConditionConfig, AudioTokenizerConfig, str]:
    """The official acestep-v15-*/config.json -> (dit, condition, audio tokenizer, model_version)."""
    get, finish = _reader(cfg, "acestep", where)
    _expect(where, "hidden_act", get("hidden_act", "silu"), ("silu",))
    _expect(where, "attention_bias", get("attention_bias", False), (False,))
    _expect(where, "rope_scaling", get("rope_scaling", None), (None,))
    _expect(where, "fsq_input_num_quantizers", get("fsq_input_num_quantizers", 1), (1,))
    model_version = get("model_version")
    n_layers = get("num_hidden_layers")
    kinds = _layer_kinds(get("layer_types", None) or _default_layer_types(n_layers), get("use_sliding_window", True),
                         where)
    hidden, inter = get("hidden_size"), get("intermediate_size")
    heads, kv_heads = get("num_attention_heads"), get("num_key_value_heads")
    # XL checkpoints give the condition side its own width; the others share the DiT's.
    enc_hidden = get("encoder_hidden_size", None) or hidden
    enc_inter = get("encoder_intermediate_size", None) or inter
    enc_heads = get("encoder_num_attention_heads", None) or heads
    enc_kv = get("encoder_num_key_value_heads", None) or kv_heads
    stack = _stack(get, enc_hidden, enc_inter, enc_heads, enc_kv, kinds)
    latent = get("audio_acoustic_hidden_dim")
    if get("fsq_dim") != enc_hidden:
        raise SourceConfigError(f"{where}: fsq_dim must equal the encoder width {enc_hidden}")
    dit = DiTConfig(
        hidden_size=hidden, intermediate_size=inter, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=get("head_dim"), rope_theta=float(get("rope_theta")), rms_norm_eps=float(get("rms_norm_eps")),
        sliding_window=get("sliding_window"), layer_types=kinds, patch_size=get("patch_size"),
        in_channels=get("in_channels"), latent_dim=latent, condition_dim=enc_hidden,
    )
    condition = ConditionConfig(
        encoder=stack, text_hidden_dim=get("text_hidden_dim"), timbre_hidden_dim=get("timbre_hidden_dim"),
        num_lyric_layers=get("num_lyric_encoder_hidden_layers"),
        num_timbre_layers=get("num_timbre_encoder_hidden_layers"),
        active_layer_limit=n_layers,
        # Only the XL modeling files prepend the timbre CLS token (see docs/parity.md).
        timbre_prepend_cls=model_version.startswith("xl"),
        timbre_fix_frame=get("timbre_fix_frame"),
    )
    tokenizer = AudioTokenizerConfig(
        encoder=stack, latent_dim=latent, pool_window_size=get("pool_window_size"),
        fsq_levels=tuple(get("fsq_input_levels")), num_pooler_layers=get("num_attention_pooler_hidden_layers"),
    )
    finish()
    return dit, condition, tokenizer, model_version


def _diffusers_stack(get, where) -> EncoderStackConfig:
    n = get("num_hidden_layers", None)
    layer_types = get("layer_types", None)
    hidden = get("hidden_size")
    return EncoderStackConfig(
        hidden_size=hidden, intermediate_size=get("intermediate_size"), num_heads=get("num_attention_heads"),
        num_kv_heads=get("num_key_value_heads"), head_dim=get("head_dim"), rope_theta=float(get("rope_theta")),
        rms_norm_eps=float(get("rms_norm_eps")), sliding_window=get("sliding_window"),
        layer_types=_layer_kinds(layer_types or _default_layer_types(max(n or 0, 64)), True, where),
    )


def acestep_from_diffusers(transformer: dict, condition: dict, tokenizer: dict, detokenizer: dict,
                           where: str) -> tuple[DiTConfig, ConditionConfig, AudioTokenizerConfig, str]:
    get, finish = _reader(transformer, "diffusers_transformer", where + "/transformer/config.json")
    _expect(where, "attention_bias", get("attention_bias", False), (False,))
    n_layers = get("num_hidden_layers")
    kinds = _layer_kinds(get("layer_types", None) or _default_layer_types(n_layers), True, where)
    hidden = get("hidden_size")
    model_version = get("model_version", None) or ("turbo" if transformer.get("is_turbo") else "base")
    enc_hidden = get("encoder_hidden_size", None) or hidden
    dit = DiTConfig(
        hidden_size=hidden, intermediate_size=get("intermediate_size"), num_heads=get("num_attention_heads"),
        num_kv_heads=get("num_key_value_heads"), head_dim=get("head_dim"), rope_theta=float(get("rope_theta")),
        rms_norm_eps=float(get("rms_norm_eps")), sliding_window=get("sliding_window"), layer_types=kinds,
        patch_size=get("patch_size"), in_channels=get("in_channels"), latent_dim=get("audio_acoustic_hidden_dim"),
        condition_dim=enc_hidden,
    )
    finish()

    get, finish = _reader(condition, "diffusers_encoder", where + "/condition_encoder/config.json")
    _expect(where, "attention_bias", get("attention_bias", False), (False,))
    cstack = _diffusers_stack(get, where)
    cond = ConditionConfig(
        encoder=cstack, text_hidden_dim=get("text_hidden_dim"), timbre_hidden_dim=get("timbre_hidden_dim"),
        num_lyric_layers=get("num_lyric_encoder_hidden_layers"),
        num_timbre_layers=get("num_timbre_encoder_hidden_layers"),
        active_layer_limit=n_layers,
        timbre_prepend_cls=model_version.startswith("xl"),
        timbre_fix_frame=750,  # diffusers hard-codes the official 750-frame (30 s) reference window
    )
    finish()

    get, finish = _reader(tokenizer, "diffusers_encoder", where + "/audio_tokenizer/config.json")
    _expect(where, "attention_bias", get("attention_bias", False), (False,))
    _expect(where, "fsq_input_num_quantizers", get("fsq_input_num_quantizers", 1), (1,))
    tstack = _diffusers_stack(get, where)
    if get("fsq_dim") != tstack.hidden_size:
        raise SourceConfigError(f"{where}: audio_tokenizer fsq_dim must equal its hidden_size")
    tok = AudioTokenizerConfig(
        encoder=tstack, latent_dim=get("audio_acoustic_hidden_dim"), pool_window_size=get("pool_window_size"),
        fsq_levels=tuple(get("fsq_input_levels", None) or (8, 8, 8, 5, 5, 5)),
        num_pooler_layers=get("num_attention_pooler_hidden_layers"),
    )
    finish()

    get, finish = _reader(detokenizer, "diffusers_encoder", where + "/audio_token_detokenizer/config.json")
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "audio_acoustic_hidden_dim", "pool_window_size", "num_attention_pooler_hidden_layers"):
        if get(key) != tokenizer.get(key):
            raise SourceConfigError(f"{where}: audio_token_detokenizer {key} differs from audio_tokenizer's")
    for key in ("rope_theta", "rms_norm_eps", "sliding_window", "layer_types", "attention_bias"):
        get(key, None)
    finish()
    return dit, cond, tok, model_version


def pipeline_config(model_version: str, pad_token_id: int, padding_side: str = "right") -> PipelineConfig:
    return PipelineConfig(model_version=model_version, text_max_tokens=TEXT_MAX_TOKENS, lyric_max_tokens=LYRIC_MAX_TOKENS,
                          pad_token_id=pad_token_id, padding_side=padding_side)


def assemble(text: Qwen3Config, vae: OobleckConfig, dit: DiTConfig, cond: ConditionConfig,
             tok: AudioTokenizerConfig, pipe: PipelineConfig) -> AceStepConfig:
    return AceStepConfig(text_encoder=text, vae=vae, dit=dit, condition=cond, audio_tokenizer=tok, pipeline=pipe)
