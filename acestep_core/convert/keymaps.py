"""Key renames as data: source checkpoint name -> our parameter name, per source layout and component.

A table is a list of `(source, target)` rules. `{}` in a source stands for a layer index (digits) and is
carried over to the same place in the target; a source starting with `re:` is a regular expression whose
groups fill `\\1`, `\\2`, ... in the target. A target of `None` drops the key on purpose (the comment beside
the rule says why). Every source key must match exactly one rule, and every parameter of our module must be
produced; `acestep_core.convert.convert` enforces both and names the offending keys.

Tensor transforms (weight-norm folding, the silence-latent transpose) are not here: they live in
`transforms.py` and run before the renames. `invert_table` turns a table around (our name -> source name),
for writing diffusers folders and for naming, in an error, the source key a missing parameter should have
had. The diffusers folder names are layout data too, so they live here as well (our component names are
`acestep_core.components.COMPONENTS`).
"""

from __future__ import annotations

# Our component -> (folder, file stem) in a diffusers AceStepPipeline folder.
DIFFUSERS_FOLDERS = {
    "dit": ("transformer", "diffusion_pytorch_model"),
    "condition": ("condition_encoder", "diffusion_pytorch_model"),
    "audio_tokenizer": ("audio_tokenizer", "diffusion_pytorch_model"),
    "audio_detokenizer": ("audio_token_detokenizer", "diffusion_pytorch_model"),
    "vae": ("vae", "diffusion_pytorch_model"),
    "text_encoder": ("text_encoder", "model"),
}

# --- official ACE-Step layout (one model.safetensors with the four ACE-Step components) -----------------------
# Written out rule by rule so that grepping a source key (with its layer index as {}) finds its line.

OFFICIAL = {
    "dit": [
        ("decoder.scale_shift_table", "scale_shift_table"),
        ("decoder.condition_embedder.weight", "condition_embedder.weight"),
        ("decoder.condition_embedder.bias", "condition_embedder.bias"),
        ("decoder.norm_out.weight", "norm_out.weight"),
        ("decoder.time_embed.linear_1.weight", "time_embed.linear_1.weight"),
        ("decoder.time_embed.linear_1.bias", "time_embed.linear_1.bias"),
        ("decoder.time_embed.linear_2.weight", "time_embed.linear_2.weight"),
        ("decoder.time_embed.linear_2.bias", "time_embed.linear_2.bias"),
        ("decoder.time_embed.time_proj.weight", "time_embed.time_proj.weight"),
        ("decoder.time_embed.time_proj.bias", "time_embed.time_proj.bias"),
        ("decoder.time_embed_r.linear_1.weight", "time_embed_r.linear_1.weight"),
        ("decoder.time_embed_r.linear_1.bias", "time_embed_r.linear_1.bias"),
        ("decoder.time_embed_r.linear_2.weight", "time_embed_r.linear_2.weight"),
        ("decoder.time_embed_r.linear_2.bias", "time_embed_r.linear_2.bias"),
        ("decoder.time_embed_r.time_proj.weight", "time_embed_r.time_proj.weight"),
        ("decoder.time_embed_r.time_proj.bias", "time_embed_r.time_proj.bias"),
        # The official wraps the patch convs in nn.Sequential(transpose, conv, transpose); we keep the conv.
        ("decoder.proj_in.1.weight", "proj_in.weight"),
        ("decoder.proj_in.1.bias", "proj_in.bias"),
        ("decoder.proj_out.1.weight", "proj_out.weight"),
        ("decoder.proj_out.1.bias", "proj_out.bias"),
        ("decoder.layers.{}.scale_shift_table", "layers.{}.scale_shift_table"),
        ("decoder.layers.{}.self_attn_norm.weight", "layers.{}.self_attn_norm.weight"),
        ("decoder.layers.{}.cross_attn_norm.weight", "layers.{}.cross_attn_norm.weight"),
        ("decoder.layers.{}.mlp_norm.weight", "layers.{}.mlp_norm.weight"),
        ("decoder.layers.{}.mlp.gate_proj.weight", "layers.{}.mlp.gate_proj.weight"),
        ("decoder.layers.{}.mlp.up_proj.weight", "layers.{}.mlp.up_proj.weight"),
        ("decoder.layers.{}.mlp.down_proj.weight", "layers.{}.mlp.down_proj.weight"),
        ("decoder.layers.{}.self_attn.q_proj.weight", "layers.{}.self_attn.q_proj.weight"),
        ("decoder.layers.{}.self_attn.k_proj.weight", "layers.{}.self_attn.k_proj.weight"),
        ("decoder.layers.{}.self_attn.v_proj.weight", "layers.{}.self_attn.v_proj.weight"),
        ("decoder.layers.{}.self_attn.o_proj.weight", "layers.{}.self_attn.o_proj.weight"),
        ("decoder.layers.{}.self_attn.q_norm.weight", "layers.{}.self_attn.q_norm.weight"),
        ("decoder.layers.{}.self_attn.k_norm.weight", "layers.{}.self_attn.k_norm.weight"),
        ("decoder.layers.{}.cross_attn.q_proj.weight", "layers.{}.cross_attn.q_proj.weight"),
        ("decoder.layers.{}.cross_attn.k_proj.weight", "layers.{}.cross_attn.k_proj.weight"),
        ("decoder.layers.{}.cross_attn.v_proj.weight", "layers.{}.cross_attn.v_proj.weight"),
        ("decoder.layers.{}.cross_attn.o_proj.weight", "layers.{}.cross_attn.o_proj.weight"),
        ("decoder.layers.{}.cross_attn.q_norm.weight", "layers.{}.cross_attn.q_norm.weight"),
        ("decoder.layers.{}.cross_attn.k_norm.weight", "layers.{}.cross_attn.k_norm.weight"),
    ],
    "condition": [
        ("encoder.text_projector.weight", "text_projector.weight"),
        ("encoder.timbre_encoder.special_token", "timbre_encoder.special_token"),
        ("null_condition_emb", "null_condition_emb"),
        ("encoder.lyric_encoder.embed_tokens.weight", "lyric_encoder.embed_tokens.weight"),
        ("encoder.lyric_encoder.embed_tokens.bias", "lyric_encoder.embed_tokens.bias"),
        ("encoder.lyric_encoder.norm.weight", "lyric_encoder.norm.weight"),
        ("encoder.lyric_encoder.layers.{}.self_attn.q_proj.weight", "lyric_encoder.layers.{}.self_attn.q_proj.weight"),
        ("encoder.lyric_encoder.layers.{}.self_attn.k_proj.weight", "lyric_encoder.layers.{}.self_attn.k_proj.weight"),
        ("encoder.lyric_encoder.layers.{}.self_attn.v_proj.weight", "lyric_encoder.layers.{}.self_attn.v_proj.weight"),
        ("encoder.lyric_encoder.layers.{}.self_attn.o_proj.weight", "lyric_encoder.layers.{}.self_attn.o_proj.weight"),
        ("encoder.lyric_encoder.layers.{}.self_attn.q_norm.weight", "lyric_encoder.layers.{}.self_attn.q_norm.weight"),
        ("encoder.lyric_encoder.layers.{}.self_attn.k_norm.weight", "lyric_encoder.layers.{}.self_attn.k_norm.weight"),
        ("encoder.lyric_encoder.layers.{}.input_layernorm.weight", "lyric_encoder.layers.{}.input_layernorm.weight"),
        ("encoder.lyric_encoder.layers.{}.post_attention_layernorm.weight", "lyric_encoder.layers.{}.post_attention_layernorm.weight"),
        ("encoder.lyric_encoder.layers.{}.mlp.gate_proj.weight", "lyric_encoder.layers.{}.mlp.gate_proj.weight"),
        ("encoder.lyric_encoder.layers.{}.mlp.up_proj.weight", "lyric_encoder.layers.{}.mlp.up_proj.weight"),
        ("encoder.lyric_encoder.layers.{}.mlp.down_proj.weight", "lyric_encoder.layers.{}.mlp.down_proj.weight"),
        ("encoder.timbre_encoder.embed_tokens.weight", "timbre_encoder.embed_tokens.weight"),
        ("encoder.timbre_encoder.embed_tokens.bias", "timbre_encoder.embed_tokens.bias"),
        ("encoder.timbre_encoder.norm.weight", "timbre_encoder.norm.weight"),
        ("encoder.timbre_encoder.layers.{}.self_attn.q_proj.weight", "timbre_encoder.layers.{}.self_attn.q_proj.weight"),
        ("encoder.timbre_encoder.layers.{}.self_attn.k_proj.weight", "timbre_encoder.layers.{}.self_attn.k_proj.weight"),
        ("encoder.timbre_encoder.layers.{}.self_attn.v_proj.weight", "timbre_encoder.layers.{}.self_attn.v_proj.weight"),
        ("encoder.timbre_encoder.layers.{}.self_attn.o_proj.weight", "timbre_encoder.layers.{}.self_attn.o_proj.weight"),
        ("encoder.timbre_encoder.layers.{}.self_attn.q_norm.weight", "timbre_encoder.layers.{}.self_attn.q_norm.weight"),
        ("encoder.timbre_encoder.layers.{}.self_attn.k_norm.weight", "timbre_encoder.layers.{}.self_attn.k_norm.weight"),
        ("encoder.timbre_encoder.layers.{}.input_layernorm.weight", "timbre_encoder.layers.{}.input_layernorm.weight"),
        ("encoder.timbre_encoder.layers.{}.post_attention_layernorm.weight", "timbre_encoder.layers.{}.post_attention_layernorm.weight"),
        ("encoder.timbre_encoder.layers.{}.mlp.gate_proj.weight", "timbre_encoder.layers.{}.mlp.gate_proj.weight"),
        ("encoder.timbre_encoder.layers.{}.mlp.up_proj.weight", "timbre_encoder.layers.{}.mlp.up_proj.weight"),
        ("encoder.timbre_encoder.layers.{}.mlp.down_proj.weight", "timbre_encoder.layers.{}.mlp.down_proj.weight"),
    ],
    "audio_tokenizer": [
        ("tokenizer.audio_acoustic_proj.weight", "audio_acoustic_proj.weight"),
        ("tokenizer.audio_acoustic_proj.bias", "audio_acoustic_proj.bias"),
        ("tokenizer.attention_pooler.special_token", "attention_pooler.special_token"),
        ("tokenizer.quantizer.project_in.weight", "quantizer.project_in.weight"),
        ("tokenizer.quantizer.project_in.bias", "quantizer.project_in.bias"),
        ("tokenizer.quantizer.project_out.weight", "quantizer.project_out.weight"),
        ("tokenizer.quantizer.project_out.bias", "quantizer.project_out.bias"),
        ("tokenizer.attention_pooler.embed_tokens.weight", "attention_pooler.embed_tokens.weight"),
        ("tokenizer.attention_pooler.embed_tokens.bias", "attention_pooler.embed_tokens.bias"),
        ("tokenizer.attention_pooler.norm.weight", "attention_pooler.norm.weight"),
        ("tokenizer.attention_pooler.layers.{}.self_attn.q_proj.weight", "attention_pooler.layers.{}.self_attn.q_proj.weight"),
        ("tokenizer.attention_pooler.layers.{}.self_attn.k_proj.weight", "attention_pooler.layers.{}.self_attn.k_proj.weight"),
        ("tokenizer.attention_pooler.layers.{}.self_attn.v_proj.weight", "attention_pooler.layers.{}.self_attn.v_proj.weight"),
        ("tokenizer.attention_pooler.layers.{}.self_attn.o_proj.weight", "attention_pooler.layers.{}.self_attn.o_proj.weight"),
        ("tokenizer.attention_pooler.layers.{}.self_attn.q_norm.weight", "attention_pooler.layers.{}.self_attn.q_norm.weight"),
        ("tokenizer.attention_pooler.layers.{}.self_attn.k_norm.weight", "attention_pooler.layers.{}.self_attn.k_norm.weight"),
        ("tokenizer.attention_pooler.layers.{}.input_layernorm.weight", "attention_pooler.layers.{}.input_layernorm.weight"),
        ("tokenizer.attention_pooler.layers.{}.post_attention_layernorm.weight", "attention_pooler.layers.{}.post_attention_layernorm.weight"),
        ("tokenizer.attention_pooler.layers.{}.mlp.gate_proj.weight", "attention_pooler.layers.{}.mlp.gate_proj.weight"),
        ("tokenizer.attention_pooler.layers.{}.mlp.up_proj.weight", "attention_pooler.layers.{}.mlp.up_proj.weight"),
        ("tokenizer.attention_pooler.layers.{}.mlp.down_proj.weight", "attention_pooler.layers.{}.mlp.down_proj.weight"),
    ],
    "audio_detokenizer": [
        ("detokenizer.special_tokens", "special_tokens"),
        ("detokenizer.proj_out.weight", "proj_out.weight"),
        ("detokenizer.proj_out.bias", "proj_out.bias"),
        ("detokenizer.embed_tokens.weight", "embed_tokens.weight"),
        ("detokenizer.embed_tokens.bias", "embed_tokens.bias"),
        ("detokenizer.norm.weight", "norm.weight"),
        ("detokenizer.layers.{}.self_attn.q_proj.weight", "layers.{}.self_attn.q_proj.weight"),
        ("detokenizer.layers.{}.self_attn.k_proj.weight", "layers.{}.self_attn.k_proj.weight"),
        ("detokenizer.layers.{}.self_attn.v_proj.weight", "layers.{}.self_attn.v_proj.weight"),
        ("detokenizer.layers.{}.self_attn.o_proj.weight", "layers.{}.self_attn.o_proj.weight"),
        ("detokenizer.layers.{}.self_attn.q_norm.weight", "layers.{}.self_attn.q_norm.weight"),
        ("detokenizer.layers.{}.self_attn.k_norm.weight", "layers.{}.self_attn.k_norm.weight"),
        ("detokenizer.layers.{}.input_layernorm.weight", "layers.{}.input_layernorm.weight"),
        ("detokenizer.layers.{}.post_attention_layernorm.weight", "layers.{}.post_attention_layernorm.weight"),
        ("detokenizer.layers.{}.mlp.gate_proj.weight", "layers.{}.mlp.gate_proj.weight"),
        ("detokenizer.layers.{}.mlp.up_proj.weight", "layers.{}.mlp.up_proj.weight"),
        ("detokenizer.layers.{}.mlp.down_proj.weight", "layers.{}.mlp.down_proj.weight"),
    ],
}

# --- diffusers AceStepPipeline layout (one folder per component) ---------------------------------------------

DIFFUSERS = {
    "dit": [
        ("scale_shift_table", "scale_shift_table"),
        ("condition_embedder.weight", "condition_embedder.weight"),
        ("condition_embedder.bias", "condition_embedder.bias"),
        ("norm_out.weight", "norm_out.weight"),
        ("time_embed.linear_1.weight", "time_embed.linear_1.weight"),
        ("time_embed.linear_1.bias", "time_embed.linear_1.bias"),
        ("time_embed.linear_2.weight", "time_embed.linear_2.weight"),
        ("time_embed.linear_2.bias", "time_embed.linear_2.bias"),
        ("time_embed.time_proj.weight", "time_embed.time_proj.weight"),
        ("time_embed.time_proj.bias", "time_embed.time_proj.bias"),
        ("time_embed_r.linear_1.weight", "time_embed_r.linear_1.weight"),
        ("time_embed_r.linear_1.bias", "time_embed_r.linear_1.bias"),
        ("time_embed_r.linear_2.weight", "time_embed_r.linear_2.weight"),
        ("time_embed_r.linear_2.bias", "time_embed_r.linear_2.bias"),
        ("time_embed_r.time_proj.weight", "time_embed_r.time_proj.weight"),
        ("time_embed_r.time_proj.bias", "time_embed_r.time_proj.bias"),
        ("proj_in_conv.weight", "proj_in.weight"),
        ("proj_in_conv.bias", "proj_in.bias"),
        ("proj_out_conv.weight", "proj_out.weight"),
        ("proj_out_conv.bias", "proj_out.bias"),
        ("layers.{}.scale_shift_table", "layers.{}.scale_shift_table"),
        ("layers.{}.self_attn_norm.weight", "layers.{}.self_attn_norm.weight"),
        ("layers.{}.cross_attn_norm.weight", "layers.{}.cross_attn_norm.weight"),
        ("layers.{}.mlp_norm.weight", "layers.{}.mlp_norm.weight"),
        ("layers.{}.mlp.gate_proj.weight", "layers.{}.mlp.gate_proj.weight"),
        ("layers.{}.mlp.up_proj.weight", "layers.{}.mlp.up_proj.weight"),
        ("layers.{}.mlp.down_proj.weight", "layers.{}.mlp.down_proj.weight"),
        ("layers.{}.self_attn.to_q.weight", "layers.{}.self_attn.q_proj.weight"),
        ("layers.{}.self_attn.to_k.weight", "layers.{}.self_attn.k_proj.weight"),
        ("layers.{}.self_attn.to_v.weight", "layers.{}.self_attn.v_proj.weight"),
        ("layers.{}.self_attn.to_out.0.weight", "layers.{}.self_attn.o_proj.weight"),
        ("layers.{}.self_attn.norm_q.weight", "layers.{}.self_attn.q_norm.weight"),
        ("layers.{}.self_attn.norm_k.weight", "layers.{}.self_attn.k_norm.weight"),
        ("layers.{}.cross_attn.to_q.weight", "layers.{}.cross_attn.q_proj.weight"),
        ("layers.{}.cross_attn.to_k.weight", "layers.{}.cross_attn.k_proj.weight"),
        ("layers.{}.cross_attn.to_v.weight", "layers.{}.cross_attn.v_proj.weight"),
        ("layers.{}.cross_attn.to_out.0.weight", "layers.{}.cross_attn.o_proj.weight"),
        ("layers.{}.cross_attn.norm_q.weight", "layers.{}.cross_attn.q_norm.weight"),
        ("layers.{}.cross_attn.norm_k.weight", "layers.{}.cross_attn.k_norm.weight"),
    ],
    "condition": [
        ("text_projector.weight", "text_projector.weight"),
        ("timbre_encoder.special_token", "timbre_encoder.special_token"),
        ("null_condition_emb", "null_condition_emb"),
        # diffusers keeps the silence latent as a buffer of the condition encoder; we store it as its own
        # file, so the converter takes it out before renaming.
        ("silence_latent", None),
        ("lyric_encoder.embed_tokens.weight", "lyric_encoder.embed_tokens.weight"),
        ("lyric_encoder.embed_tokens.bias", "lyric_encoder.embed_tokens.bias"),
        ("lyric_encoder.norm.weight", "lyric_encoder.norm.weight"),
        ("lyric_encoder.layers.{}.self_attn.to_q.weight", "lyric_encoder.layers.{}.self_attn.q_proj.weight"),
        ("lyric_encoder.layers.{}.self_attn.to_k.weight", "lyric_encoder.layers.{}.self_attn.k_proj.weight"),
        ("lyric_encoder.layers.{}.self_attn.to_v.weight", "lyric_encoder.layers.{}.self_attn.v_proj.weight"),
        ("lyric_encoder.layers.{}.self_attn.to_out.0.weight", "lyric_encoder.layers.{}.self_attn.o_proj.weight"),
        ("lyric_encoder.layers.{}.self_attn.norm_q.weight", "lyric_encoder.layers.{}.self_attn.q_norm.weight"),
        ("lyric_encoder.layers.{}.self_attn.norm_k.weight", "lyric_encoder.layers.{}.self_attn.k_norm.weight"),
        ("lyric_encoder.layers.{}.input_layernorm.weight", "lyric_encoder.layers.{}.input_layernorm.weight"),
        ("lyric_encoder.layers.{}.post_attention_layernorm.weight", "lyric_encoder.layers.{}.post_attention_layernorm.weight"),
        ("lyric_encoder.layers.{}.mlp.gate_proj.weight", "lyric_encoder.layers.{}.mlp.gate_proj.weight"),
        ("lyric_encoder.layers.{}.mlp.up_proj.weight", "lyric_encoder.layers.{}.mlp.up_proj.weight"),
        ("lyric_encoder.layers.{}.mlp.down_proj.weight", "lyric_encoder.layers.{}.mlp.down_proj.weight"),
        ("timbre_encoder.embed_tokens.weight", "timbre_encoder.embed_tokens.weight"),
        ("timbre_encoder.embed_tokens.bias", "timbre_encoder.embed_tokens.bias"),
        ("timbre_encoder.norm.weight", "timbre_encoder.norm.weight"),
        ("timbre_encoder.layers.{}.self_attn.to_q.weight", "timbre_encoder.layers.{}.self_attn.q_proj.weight"),
        ("timbre_encoder.layers.{}.self_attn.to_k.weight", "timbre_encoder.layers.{}.self_attn.k_proj.weight"),
        ("timbre_encoder.layers.{}.self_attn.to_v.weight", "timbre_encoder.layers.{}.self_attn.v_proj.weight"),
        ("timbre_encoder.layers.{}.self_attn.to_out.0.weight", "timbre_encoder.layers.{}.self_attn.o_proj.weight"),
        ("timbre_encoder.layers.{}.self_attn.norm_q.weight", "timbre_encoder.layers.{}.self_attn.q_norm.weight"),
        ("timbre_encoder.layers.{}.self_attn.norm_k.weight", "timbre_encoder.layers.{}.self_attn.k_norm.weight"),
        ("timbre_encoder.layers.{}.input_layernorm.weight", "timbre_encoder.layers.{}.input_layernorm.weight"),
        ("timbre_encoder.layers.{}.post_attention_layernorm.weight", "timbre_encoder.layers.{}.post_attention_layernorm.weight"),
        ("timbre_encoder.layers.{}.mlp.gate_proj.weight", "timbre_encoder.layers.{}.mlp.gate_proj.weight"),
        ("timbre_encoder.layers.{}.mlp.up_proj.weight", "timbre_encoder.layers.{}.mlp.up_proj.weight"),
        ("timbre_encoder.layers.{}.mlp.down_proj.weight", "timbre_encoder.layers.{}.mlp.down_proj.weight"),
    ],
    "audio_tokenizer": [
        ("audio_acoustic_proj.weight", "audio_acoustic_proj.weight"),
        ("audio_acoustic_proj.bias", "audio_acoustic_proj.bias"),
        ("attention_pooler.special_token", "attention_pooler.special_token"),
        ("quantizer.project_in.weight", "quantizer.project_in.weight"),
        ("quantizer.project_in.bias", "quantizer.project_in.bias"),
        ("quantizer.project_out.weight", "quantizer.project_out.weight"),
        ("quantizer.project_out.bias", "quantizer.project_out.bias"),
        ("attention_pooler.embed_tokens.weight", "attention_pooler.embed_tokens.weight"),
        ("attention_pooler.embed_tokens.bias", "attention_pooler.embed_tokens.bias"),
        ("attention_pooler.norm.weight", "attention_pooler.norm.weight"),
        ("attention_pooler.layers.{}.self_attn.to_q.weight", "attention_pooler.layers.{}.self_attn.q_proj.weight"),
        ("attention_pooler.layers.{}.self_attn.to_k.weight", "attention_pooler.layers.{}.self_attn.k_proj.weight"),
        ("attention_pooler.layers.{}.self_attn.to_v.weight", "attention_pooler.layers.{}.self_attn.v_proj.weight"),
        ("attention_pooler.layers.{}.self_attn.to_out.0.weight", "attention_pooler.layers.{}.self_attn.o_proj.weight"),
        ("attention_pooler.layers.{}.self_attn.norm_q.weight", "attention_pooler.layers.{}.self_attn.q_norm.weight"),
        ("attention_pooler.layers.{}.self_attn.norm_k.weight", "attention_pooler.layers.{}.self_attn.k_norm.weight"),
        ("attention_pooler.layers.{}.input_layernorm.weight", "attention_pooler.layers.{}.input_layernorm.weight"),
        ("attention_pooler.layers.{}.post_attention_layernorm.weight", "attention_pooler.layers.{}.post_attention_layernorm.weight"),
        ("attention_pooler.layers.{}.mlp.gate_proj.weight", "attention_pooler.layers.{}.mlp.gate_proj.weight"),
        ("attention_pooler.layers.{}.mlp.up_proj.weight", "attention_pooler.layers.{}.mlp.up_proj.weight"),
        ("attention_pooler.layers.{}.mlp.down_proj.weight", "attention_pooler.layers.{}.mlp.down_proj.weight"),
    ],
    "audio_detokenizer": [
        ("special_tokens", "special_tokens"),
        ("proj_out.weight", "proj_out.weight"),
        ("proj_out.bias", "proj_out.bias"),
        ("embed_tokens.weight", "embed_tokens.weight"),
        ("embed_tokens.bias", "embed_tokens.bias"),
        ("norm.weight", "norm.weight"),
        ("layers.{}.self_attn.to_q.weight", "layers.{}.self_attn.q_proj.weight"),
        ("layers.{}.self_attn.to_k.weight", "layers.{}.self_attn.k_proj.weight"),
        ("layers.{}.self_attn.to_v.weight", "layers.{}.self_attn.v_proj.weight"),
        ("layers.{}.self_attn.to_out.0.weight", "layers.{}.self_attn.o_proj.weight"),
        ("layers.{}.self_attn.norm_q.weight", "layers.{}.self_attn.q_norm.weight"),
        ("layers.{}.self_attn.norm_k.weight", "layers.{}.self_attn.k_norm.weight"),
        ("layers.{}.input_layernorm.weight", "layers.{}.input_layernorm.weight"),
        ("layers.{}.post_attention_layernorm.weight", "layers.{}.post_attention_layernorm.weight"),
        ("layers.{}.mlp.gate_proj.weight", "layers.{}.mlp.gate_proj.weight"),
        ("layers.{}.mlp.up_proj.weight", "layers.{}.mlp.up_proj.weight"),
        ("layers.{}.mlp.down_proj.weight", "layers.{}.mlp.down_proj.weight"),
    ],
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
