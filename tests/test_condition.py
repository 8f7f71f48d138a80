"""Condition encoder: official frozen parity, live diffusers parity, packing/unpacking, XL width, validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep_core.condition import ConditionEncoder, pack_sequences, unpack_references
from acestep_core.config import ConditionConfig, EncoderStackConfig
from acestep_core.convert.convert import convert_component

FIXTURES = Path(__file__).parent / "fixtures"
TURBO = FIXTURES / "official_tiny_turbo"
CHECKPOINT = TURBO / "checkpoints" / "acestep-v15-turbo"
KINDS = {"sliding_attention": "sliding", "full_attention": "full"}


def condition_config_from_official(c: dict) -> ConditionConfig:
    """The fixture's official config.json fields that shape the condition encoder (built by hand)."""
    assert c["use_sliding_window"]
    stack = EncoderStackConfig(
        hidden_size=c.get("encoder_hidden_size") or c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_heads=c["num_attention_heads"], num_kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        rope_theta=float(c["rope_theta"]), rms_norm_eps=c["rms_norm_eps"], sliding_window=c["sliding_window"],
        layer_types=tuple(KINDS[t] for t in c["layer_types"]),
    )
    return ConditionConfig(
        encoder=stack, text_hidden_dim=c["text_hidden_dim"], timbre_hidden_dim=c["timbre_hidden_dim"],
        num_lyric_layers=c["num_lyric_encoder_hidden_layers"], num_timbre_layers=c["num_timbre_encoder_hidden_layers"],
        active_layer_limit=c["num_hidden_layers"], timbre_prepend_cls=c["model_version"].startswith("xl"),
        timbre_fix_frame=c["timbre_fix_frame"],
    )


@pytest.fixture(scope="module")
def cfg() -> ConditionConfig:
    return condition_config_from_official(json.loads((CHECKPOINT / "config.json").read_text()))


@pytest.fixture(scope="module")
def official(cfg) -> ConditionEncoder:
    model = ConditionEncoder(cfg).eval()
    model.load_state_dict(convert_component(load_file(CHECKPOINT / "model.safetensors"), "official", "condition"))
    return model


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(TURBO / "reference" / "condition_encoder.safetensors")


def close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def encode(model, r):
    with torch.no_grad():
        return model(r["text_hidden_states"], r["text_attention_mask"], r["lyric_hidden_states"],
                     r["lyric_attention_mask"], r["refer_audio_acoustic_hidden_states_packed"],
                     r["refer_audio_order_mask"])


# --- 1. frozen official parity ------------------------------------------------------------------------------

def test_official_intermediates(official, ref):
    with torch.no_grad():
        close(official.text_projector(ref["text_hidden_states"]), ref["text_projection"])
        close(official.lyric_encoder(ref["lyric_hidden_states"], ref["lyric_attention_mask"]),
              ref["lyric_encoder_output"])
        timbre, mask = official.encode_timbre(ref["refer_audio_acoustic_hidden_states_packed"],
                                              ref["refer_audio_order_mask"], batch_size=2)
    close(timbre, ref["timbre_embeddings"])
    assert torch.equal(mask.long(), ref["timbre_mask"])


def test_official_packed(official, ref):
    states, mask = encode(official, ref)
    assert states.shape == (2, 34, 48)
    close(states, ref["encoder_hidden_states"])
    assert mask.dtype == torch.bool and torch.equal(mask.long(), ref["encoder_attention_mask"])


def test_parameter_names_match_converter(official):
    names = set(official.state_dict())
    assert {"text_projector.weight", "null_condition_emb", "timbre_encoder.special_token",
            "lyric_encoder.embed_tokens.weight", "lyric_encoder.layers.1.mlp.down_proj.weight",
            "timbre_encoder.norm.weight"} <= names
    assert official.null_condition_emb.shape == (1, 1, 48)


def test_meta_build_then_assign(cfg, ref):
    with torch.device("meta"):
        model = ConditionEncoder(cfg)
    sd = convert_component(load_file(CHECKPOINT / "model.safetensors"), "official", "condition")
    model.load_state_dict(sd, strict=True, assign=True)
    close(encode(model, ref)[0], ref["encoder_hidden_states"])


# --- 2. behaviour -------------------------------------------------------------------------------------------

def test_pack_sequences_valid_first_and_stable():
    h1 = torch.tensor([[[1.0], [2.0], [3.0]]])
    h2 = torch.tensor([[[4.0], [5.0]]])
    packed, mask = pack_sequences(h1, torch.tensor([[1, 0, 1]]), h2, torch.tensor([[0, 1]]))
    assert packed.flatten().tolist() == [1.0, 3.0, 5.0, 2.0, 4.0]
    assert mask.tolist() == [[True, True, True, False, False]]


def test_unpack_references_order():
    embs = torch.arange(4.0)[:, None].expand(4, 3)  # reference i has value i
    timbre, mask = unpack_references(embs, torch.tensor([1, 0, 1, 1]), batch_size=2)
    assert timbre[..., 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 2.0, 3.0]]
    assert mask.tolist() == [[True, False, False], [True, True, True]]


def test_turbo_ignores_special_token_and_padding_is_inert(official, ref):
    base = encode(official, ref)
    model = ConditionEncoder(official.cfg).eval()
    model.load_state_dict(official.state_dict())
    with torch.no_grad():
        model.timbre_encoder.special_token.add_(1.0)  # not prepended on turbo: no effect
    r = dict(ref)
    r["lyric_hidden_states"] = ref["lyric_hidden_states"].clone()
    r["lyric_hidden_states"][0, 15:] = 100.0  # item 0's lyric padding (mask 0) must not leak anywhere valid
    states, mask = encode(model, r)
    torch.testing.assert_close(states[mask], base[0][mask], rtol=0, atol=1e-5)


def test_active_layer_limit(cfg, official, ref):
    limited = ConditionEncoder(dataclasses.replace(cfg, active_layer_limit=1)).eval()
    limited.load_state_dict(official.state_dict())
    with torch.no_grad():
        a = limited.lyric_encoder(ref["lyric_hidden_states"], ref["lyric_attention_mask"])
        limited.lyric_encoder.layers[1].mlp.down_proj.weight.mul_(3.0)  # layer 1 never runs
        b = limited.lyric_encoder(ref["lyric_hidden_states"], ref["lyric_attention_mask"])
    assert torch.equal(a, b)
    assert not torch.allclose(a, ref["lyric_encoder_output"], atol=1e-3)


def test_xl_style_width_and_cls(cfg):
    # XL: the encoder is narrower than the DiT (here 32 vs 48) and the timbre CLS token is prepended.
    stack = dataclasses.replace(cfg.encoder, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)
    xl = dataclasses.replace(cfg, encoder=stack, timbre_prepend_cls=True)
    torch.manual_seed(0)
    model = ConditionEncoder(xl).eval()
    assert model.null_condition_emb.shape == (1, 1, 32)
    text, lyric = torch.randn(2, 5, 64), torch.randn(2, 7, 64)
    text_mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    lyric_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    refs, order = torch.randn(3, 11, 64), torch.tensor([0, 1, 0])
    with torch.no_grad():
        states, mask = model(text, text_mask, lyric, lyric_mask, refs, order)
        assert states.shape == (2, 7 + 2 + 5, 32) and mask.sum(1).tolist() == [7 + 2 + 5, 4 + 1 + 3]
        timbre, _ = model.encode_timbre(refs, order, 2)
        # The CLS token now steers the timbre vector.
        model.timbre_encoder.special_token.add_(1.0)
        moved, _ = model.encode_timbre(refs, order, 2)
    assert not torch.allclose(timbre, moved)


def test_validation(official, ref):
    r = dict(ref)
    args = lambda r: (r["text_hidden_states"], r["text_attention_mask"], r["lyric_hidden_states"],  # noqa: E731
                      r["lyric_attention_mask"], r["refer_audio_acoustic_hidden_states_packed"],
                      r["refer_audio_order_mask"])
    cases = {
        "refer_order": [("refer_audio_order_mask", torch.tensor([0, 0, 0])),  # item 1 has no reference
                        ("refer_audio_order_mask", torch.tensor([0, 1, 2])),  # 2 is out of range
                        ("refer_audio_order_mask", torch.tensor([0, 1])),  # wrong length
                        ("refer_audio_order_mask", torch.tensor([0.0, 1.0, 1.0]))],
        "refer_latents_packed": [("refer_audio_acoustic_hidden_states_packed", torch.randn(3, 10, 32))],
        "text_hidden_states": [("text_hidden_states", torch.randn(2, 12, 48))],
        "text_mask": [("text_attention_mask", torch.ones(2, 11))],
        "lyric_mask": [("lyric_attention_mask", torch.ones(1, 20))],
        "lyric_embeds": [("lyric_hidden_states", torch.randn(2, 20, 48))],
    }
    for name, edits in cases.items():
        for key, value in edits:
            bad = dict(r, **{key: value})
            with pytest.raises(ValueError, match=name):
                official(*args(bad))

    # Batch sizes of the caption and the lyrics disagree.
    bad = dict(r, lyric_hidden_states=r["lyric_hidden_states"][:1], lyric_attention_mask=r["lyric_attention_mask"][:1])
    with pytest.raises(ValueError, match="lyric_embeds"):
        official(*args(bad))


# --- 3. live diffusers parity -------------------------------------------------------------------------------

def test_diffusers_live_parity(cfg):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    enc = cfg.encoder
    ref_model = diffusers.AceStepConditionEncoder(
        hidden_size=enc.hidden_size, intermediate_size=enc.intermediate_size, text_hidden_dim=cfg.text_hidden_dim,
        timbre_hidden_dim=cfg.timbre_hidden_dim, num_lyric_encoder_hidden_layers=cfg.num_lyric_layers,
        num_timbre_encoder_hidden_layers=cfg.num_timbre_layers, num_attention_heads=enc.num_heads,
        num_key_value_heads=enc.num_kv_heads, head_dim=enc.head_dim, rope_theta=enc.rope_theta,
        rms_norm_eps=enc.rms_norm_eps, sliding_window=enc.sliding_window,
        layer_types=[f"{k}_attention" for k in enc.layer_types],
    ).eval()
    with torch.no_grad():
        for p in ref_model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0))  # norms around 1
    model = ConditionEncoder(cfg).eval()
    model.load_state_dict(convert_component(ref_model.state_dict(), "diffusers", "condition"))

    text, lyric = torch.randn(2, 9, 64), torch.randn(2, 13, 64)
    text_mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    lyric_mask = torch.tensor([[1] * 10 + [0] * 3, [1] * 13])
    refs, order = torch.randn(3, 20, 64), torch.tensor([1, 0, 1])  # 20 frames > sliding window 8
    with torch.no_grad():
        want, want_mask = ref_model(text, text_mask, lyric, lyric_mask, refs, order)
        got, got_mask = model(text, text_mask, lyric, lyric_mask, refs, order)
    close(got, want)
    assert torch.equal(got_mask, want_mask)
    torch.testing.assert_close(model.null_condition_emb, ref_model.null_condition_emb, rtol=0, atol=0)
