"""Key renames as data: source checkpoint name -> our parameter name, per source layout and component.

A table is a list of `(source, target)` rules. `{}` in a source stands for a layer index (digits) and is
carried over to the same place in the target; a source starting with `re:` is a regular expression whose
groups fill `\\1`, `\\2`, ... in the target. A target of `None` drops the key on purpose (the comment beside
the rule says why). Every source key must match exactly one rule, and every parameter of our module must be
produced; `weights_convert.convert` enforces both and names the offending keys.

Tensor transforms (weight-norm folding, the silence-latent transpose) are not here: they live in
`transforms.py` and run before the renames. `invert_table` turns a table around (our name -> source name),
for writing diffusers folders and for naming, in an error, the source key a missing parameter should have
had. The component names and diffusers folder names are layout data too, so they live here as well.
"""

from __future__ import annotations

# Our components, one safetensors file each in our layout.
COMPONENTS = ("text_encoder", "vae", "dit", "condition", "audio_tokenizer", "audio_detokenizer")

# Our component -> (folder, file stem) in a diffusers AceStepPipeline folder.
DIFFUSERS_FOLDERS = {
    "dit": ("transformer", "diffusion_pytorch_model"),
    "condition": ("condition_encoder", "diffusion_pytorch_model"),
    "audio_tokenizer": ("audio_tokenizer", "diffusion_pytorch_model"),
    "audio_detokenizer": ("audio_token_detokenizer", "diffusion_pytorch_model"),
    "vae": ("vae", "diffusion_pytorch_model"),
    "text_encoder": ("text_encoder", "model"),
}

# --- building blocks -------------------------------------------------------------------------------------

# Our attention / MLP names inside one transformer layer are the official (Qwen3-style) ones.
_LAYER_OFFICIAL = [
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
]

# diffusers spells the attention projections the diffusers way.
_DIFFUSERS_ATTN = {
    "to_q.weight": "q_proj.weight",
    "to_k.weight": "k_proj.weight",
    "to_v.weight": "v_proj.weight",
    "to_out.0.weight": "o_proj.weight",
    "norm_q.weight": "q_norm.weight",
    "norm_k.weight": "k_norm.weight",
}
_MLP = ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]


def _same(prefix_src: str, prefix_dst: str, names) -> list[tuple[str, str]]:
    return [(prefix_src + n, prefix_dst + n) for n in names]


def _diffusers_attn(prefix_src: str, prefix_dst: str) -> list[tuple[str, str]]:
    return [(prefix_src + s, prefix_dst + d) for s, d in _DIFFUSERS_ATTN.items()]


def _encoder_stack_official(src: str, dst: str) -> list[tuple[str, str]]:
    """An official EncoderStack: embed_tokens, layers, final norm."""
    return (_same(src, dst, ["embed_tokens.weight", "embed_tokens.bias", "norm.weight"])
            + _same(src + "layers.{}.", dst + "layers.{}.", _LAYER_OFFICIAL))


def _encoder_stack_diffusers(src: str, dst: str) -> list[tuple[str, str]]:
    return (_same(src, dst, ["embed_tokens.weight", "embed_tokens.bias", "norm.weight"])
            + _diffusers_attn(src + "layers.{}.self_attn.", dst + "layers.{}.self_attn.")
            + _same(src + "layers.{}.", dst + "layers.{}.",
                    ["input_layernorm.weight", "post_attention_layernorm.weight", *_MLP]))


_DIT_TOP = [
    "scale_shift_table", "condition_embedder.weight", "condition_embedder.bias", "norm_out.weight",
    *[f"{emb}.{lin}.{p}" for emb in ("time_embed", "time_embed_r")
      for lin in ("linear_1", "linear_2", "time_proj") for p in ("weight", "bias")],
]
_DIT_LAYER_NORMS = ["scale_shift_table", "self_attn_norm.weight", "cross_attn_norm.weight", "mlp_norm.weight", *_MLP]
_ATTN_OFFICIAL = ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "q_norm.weight", "k_norm.weight"]

# --- official ACE-Step layout (one model.safetensors with all four components) ----------------------------

OFFICIAL = {
    "dit": (
        _same("decoder.", "", _DIT_TOP)
        + [
            # The official wraps the patch convs in nn.Sequential(transpose, conv, transpose); we keep the conv.
            ("decoder.proj_in.1.weight", "proj_in.weight"), ("decoder.proj_in.1.bias", "proj_in.bias"),
            ("decoder.proj_out.1.weight", "proj_out.weight"), ("decoder.proj_out.1.bias", "proj_out.bias"),
        ]
        + _same("decoder.layers.{}.", "layers.{}.", _DIT_LAYER_NORMS)
        + _same("decoder.layers.{}.self_attn.", "layers.{}.self_attn.", _ATTN_OFFICIAL)
        + _same("decoder.layers.{}.cross_attn.", "layers.{}.cross_attn.", _ATTN_OFFICIAL)
    ),
    "condition": (
        [("encoder.text_projector.weight", "text_projector.weight"),
         ("encoder.timbre_encoder.special_token", "timbre_encoder.special_token"),
         ("null_condition_emb", "null_condition_emb")]
        + _encoder_stack_official("encoder.lyric_encoder.", "lyric_encoder.")
        + _encoder_stack_official("encoder.timbre_encoder.", "timbre_encoder.")
    ),
    "audio_tokenizer": (
        _same("tokenizer.", "", [
            "audio_acoustic_proj.weight", "audio_acoustic_proj.bias", "attention_pooler.special_token",
            "quantizer.project_in.weight", "quantizer.project_in.bias",
            "quantizer.project_out.weight", "quantizer.project_out.bias",
        ])
        + _encoder_stack_official("tokenizer.attention_pooler.", "attention_pooler.")
    ),
    "audio_detokenizer": (
        _same("detokenizer.", "", ["special_tokens", "proj_out.weight", "proj_out.bias"])
        + _encoder_stack_official("detokenizer.", "")
    ),
}

# --- diffusers AceStepPipeline layout (one folder per component) ------------------------------------------

DIFFUSERS = {
    "dit": (
        _same("", "", _DIT_TOP)
        + [("proj_in_conv.weight", "proj_in.weight"), ("proj_in_conv.bias", "proj_in.bias"),
           ("proj_out_conv.weight", "proj_out.weight"), ("proj_out_conv.bias", "proj_out.bias")]
        + _same("layers.{}.", "layers.{}.", _DIT_LAYER_NORMS)
        + _diffusers_attn("layers.{}.self_attn.", "layers.{}.self_attn.")
        + _diffusers_attn("layers.{}.cross_attn.", "layers.{}.cross_attn.")
    ),
    "condition": (
        [("text_projector.weight", "text_projector.weight"),
         ("timbre_encoder.special_token", "timbre_encoder.special_token"),
         ("null_condition_emb", "null_condition_emb"),
         # diffusers keeps the silence latent as a buffer of the condition encoder; we store it as its
         # own file, so it is routed out before renaming (see convert.split_silence_latent).
         ("silence_latent", None)]
        + _encoder_stack_diffusers("lyric_encoder.", "lyric_encoder.")
        + _encoder_stack_diffusers("timbre_encoder.", "timbre_encoder.")
    ),
    "audio_tokenizer": (
        _same("", "", [
            "audio_acoustic_proj.weight", "audio_acoustic_proj.bias", "attention_pooler.special_token",
            "quantizer.project_in.weight", "quantizer.project_in.bias",
            "quantizer.project_out.weight", "quantizer.project_out.bias",
        ])
        + _encoder_stack_diffusers("attention_pooler.", "attention_pooler.")
    ),
    "audio_detokenizer": (
        _same("", "", ["special_tokens", "proj_out.weight", "proj_out.bias"])
        + _encoder_stack_diffusers("", "")
    ),
}

# --- shared by both layouts -------------------------------------------------------------------------------

# transformers Qwen3Model (the official `Qwen3-Embedding-0.6B/` folder and diffusers' `text_encoder/`).
TRANSFORMERS_QWEN3 = (
    [("re:^(?:model\\.)?embed_tokens\\.weight$", "embed_tokens.weight"),
     ("re:^(?:model\\.)?norm\\.weight$", "norm.weight"),
     ("re:^(?:model\\.)?layers\\.(\\d+)\\.(.+)$", "layers.\\1.\\2"),
     # A causal-LM head, when a Qwen3ForCausalLM file is given: the encoder only needs hidden states.
     ("lm_head.weight", None)]
)

# Oobleck VAE: after weight-norm folding (transforms.fold_weight_norm) our names equal diffusers'. The
# completeness check against our module's parameters still rejects any stray or missing key.
OOBLECK = [("re:^((?:encoder|decoder)\\..+)$", "\\1")]

TABLES = {
    "official": {**OFFICIAL, "text_encoder": TRANSFORMERS_QWEN3, "vae": OOBLECK},
    "diffusers": {**DIFFUSERS, "text_encoder": TRANSFORMERS_QWEN3, "vae": OOBLECK},
    "transformers": {"text_encoder": TRANSFORMERS_QWEN3},
}


# --- the inverse direction: our name -> source name ---------------------------------------------------------

# The two regex tables preserve names: TRANSFORMERS_QWEN3 only drops an optional `model.` prefix (a Qwen3Model,
# which diffusers' text_encoder is, has none) and OOBLECK passes every name through. Their inverse is
# therefore the identity, written here as a rule.
_IDENTITY_INVERSES = (TRANSFORMERS_QWEN3, OOBLECK)
_IDENTITY = [("re:^(.+)$", "\\1")]


def invert_table(table: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """Our name -> source name rules: swap the two templates of each `{}` rule.

    Rules whose target is None drop a source key on purpose and have no inverse; the one such key diffusers
    needs back, the condition encoder's `silence_latent`, is added by `to_diffusers.diffusers_state_dicts`.
    """
    if any(table is t for t in _IDENTITY_INVERSES):
        return list(_IDENTITY)
    inverted = []
    for src, dst in table:
        if src.startswith("re:"):
            raise ValueError(f"a regex rule has no mechanical inverse: {src!r}; add its table to _IDENTITY_INVERSES "
                             "only if it preserves names")
        if dst is None:
            continue
        if src.count("{}") != dst.count("{}"):
            raise ValueError(f"rule {src!r} -> {dst!r}: both sides need the same number of '{{}}'")
        inverted.append((dst, src))
    return inverted
