"""Audio tokenizer / detokenizer: official frozen parity, live diffusers parity, FSQ numerics, code strings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep_core.config import AudioTokenizerConfig, EncoderStackConfig
from acestep_core.fsq import FSQ, AudioDetokenizer, AudioTokenizer, format_audio_codes, parse_audio_codes
from acestep_core.convert.convert import convert_component

FIXTURES = Path(__file__).parent / "fixtures"
TURBO = FIXTURES / "official_tiny_turbo"
CHECKPOINT = TURBO / "checkpoints" / "acestep-v15-turbo"
KINDS = {"sliding_attention": "sliding", "full_attention": "full"}


def tokenizer_config_from_official(c: dict) -> AudioTokenizerConfig:
    """The fixture's official config.json fields that shape the tokenizer (built by hand)."""
    assert c["use_sliding_window"] and c["fsq_input_num_quantizers"] == 1
    stack = EncoderStackConfig(
        hidden_size=c.get("encoder_hidden_size") or c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_heads=c["num_attention_heads"], num_kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        rope_theta=float(c["rope_theta"]), rms_norm_eps=c["rms_norm_eps"], sliding_window=c["sliding_window"],
        layer_types=tuple(KINDS[t] for t in c["layer_types"]),
    )
    return AudioTokenizerConfig(encoder=stack, latent_dim=c["audio_acoustic_hidden_dim"],
                                pool_window_size=c["pool_window_size"], fsq_levels=tuple(c["fsq_input_levels"]),
                                num_pooler_layers=c["num_attention_pooler_hidden_layers"])


@pytest.fixture(scope="module")
def cfg() -> AudioTokenizerConfig:
    return tokenizer_config_from_official(json.loads((CHECKPOINT / "config.json").read_text()))


@pytest.fixture(scope="module")
def official(cfg) -> tuple[AudioTokenizer, AudioDetokenizer]:
    sd = load_file(CHECKPOINT / "model.safetensors")
    tok, detok = AudioTokenizer(cfg).eval(), AudioDetokenizer(cfg).eval()
    tok.load_state_dict(convert_component(sd, "official", "audio_tokenizer"))
    detok.load_state_dict(convert_component(sd, "official", "audio_detokenizer"))
    return tok, detok


@pytest.fixture(scope="module")
def silence() -> torch.Tensor:
    return torch.load(CHECKPOINT / "silence_latent.pt", weights_only=True).transpose(1, 2)  # [1, 1500, 64]


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(TURBO / "reference" / "audio_tokenizer.safetensors")


def close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# --- 1. frozen official parity ------------------------------------------------------------------------------

def test_official_tokenize_detokenize(official, silence, ref):
    tok, detok = official
    with torch.no_grad():
        quantized, codes, mask5 = tok.tokenize(ref["latents"], silence, ref["attention_mask"])  # 23 frames
        close(quantized, ref["quantized"])
        assert codes.dtype == torch.int64 and torch.equal(codes, ref["codes"][..., 0].long())
        assert torch.equal(mask5.float(), ref["code_mask"])
        close(detok(quantized), ref["detokenized"])


def test_official_from_codes(official, ref):
    tok, detok = official
    with torch.no_grad():
        quantized = tok.codes_to_quantized(ref["codes"][..., 0].long())
        close(quantized, ref["quantized_from_codes"])
        close(detok(quantized), ref["detokenized_from_codes"])


def test_meta_build_then_assign(cfg, silence, ref):
    sd = load_file(CHECKPOINT / "model.safetensors")
    with torch.device("meta"):
        tok = AudioTokenizer(cfg)
    tok.load_state_dict(convert_component(sd, "official", "audio_tokenizer"), strict=True, assign=True)
    with torch.no_grad():
        assert torch.equal(tok.tokenize(ref["latents"], silence)[1], ref["codes"][..., 0].long())


# --- 2. behaviour -------------------------------------------------------------------------------------------

def test_silence_padding_and_mask_pooling(official, silence, ref):
    tok, _ = official
    latents = ref["latents"]  # [1, 23, 64]
    mask = torch.zeros(1, 23)
    mask[:, :11] = 1  # steps 0, 1 fully real, step 2 partly real, steps 3, 4 padding
    with torch.no_grad():
        _, codes, mask5 = tok.tokenize(latents, silence, mask)
        _, codes_padded, _ = tok.tokenize(torch.cat([latents, silence[:, :2]], dim=1), silence)
    assert mask5.tolist() == [[True, True, True, False, False]]
    assert torch.equal(codes, codes_padded)  # the 2 pad frames are the silence latent's first frames


def test_fsq_levels_and_roundtrip():
    torch.manual_seed(0)
    fsq = FSQ(16, (8, 8, 8, 5, 5, 5))
    assert fsq.codebook_size == 64000
    with torch.no_grad():
        quantized, codes = fsq(torch.randn(4, 50, 16) * 3)
        assert codes.min() >= 0 and codes.max() < 64000
        close(fsq.codes_to_quantized(codes), quantized)
        # Every index decodes to a distinct point (the mixed-radix basis is a bijection).
        fsq.project_out.weight.copy_(torch.eye(16, 6))
        fsq.project_out.bias.zero_()
        points = fsq.codes_to_quantized(torch.arange(64000))[:, :6]
    assert torch.unique(points, dim=0).shape[0] == 64000
    # Channel 0 varies fastest; code values are evenly spaced in [-1, 1] (8 levels -> step 2/7).
    close(points[1] - points[0], torch.tensor([2 / 7, 0, 0, 0, 0, 0]))
    close(points[8] - points[0], torch.tensor([0, 2 / 7, 0, 0, 0, 0]))
    assert points.min() == -1 and points.max() == 1


def test_bf16_runs_quantizer_in_float32(official, silence, ref):
    tok, detok = official
    tok16 = AudioTokenizer(tok.cfg).eval()
    tok16.load_state_dict(tok.state_dict())
    tok16.to(torch.bfloat16)
    with torch.no_grad():
        quantized, codes, _ = tok16.tokenize(ref["latents"].bfloat16(), silence.bfloat16())
        assert quantized.dtype == torch.bfloat16 and codes.dtype == torch.int64
        assert tok16.codes_to_quantized(codes).dtype == torch.bfloat16


def test_validation(official, silence, ref):
    tok, detok = official
    with pytest.raises(ValueError, match="latents"):
        tok.tokenize(torch.randn(1, 10, 32), silence)
    with pytest.raises(ValueError, match="silence_latent"):
        tok.tokenize(ref["latents"], silence[:, :1])  # 2 pad frames needed
    with pytest.raises(ValueError, match="mask"):
        tok.tokenize(ref["latents"], silence, torch.ones(1, 22))
    with pytest.raises(ValueError, match="codes"):
        tok.codes_to_quantized(torch.tensor([[64000]]))
    with pytest.raises(ValueError, match="codes"):
        tok.codes_to_quantized(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="quantized"):
        detok(torch.randn(1, 5, 32))


# --- 3. code strings ----------------------------------------------------------------------------------------

def test_code_string_roundtrip():
    codes = torch.tensor([0, 35530, 63999, 7])
    text = format_audio_codes(codes)
    assert text == "<|audio_code_0|><|audio_code_35530|><|audio_code_63999|><|audio_code_7|>"
    assert torch.equal(parse_audio_codes(text), codes)
    assert parse_audio_codes(" <|audio_code_1|>\n<|audio_code_2|> ").tolist() == [1, 2]


@pytest.mark.parametrize("text, message", [
    ("", "no <"),
    ("   ", "no <"),
    ("<|audio_code_64000|>", "out of range"),
    ("<|audio_code_1|>hello<|audio_code_2|>", "'hello"),
    ("<|audio_code_1|><|audio_code_-3|>", "character 16"),
    ("<|audio_code_x|>", "unexpected"),
    ("<|audio_code_12", "unexpected"),
])
def test_code_string_malformed(text, message):
    with pytest.raises(ValueError, match=message):
        parse_audio_codes(text)


def test_code_format_rejects_bad_codes():
    for bad in (torch.tensor([1.0]), torch.tensor([[1]]), torch.tensor([-1]), torch.tensor([64000]), [1, 2]):
        with pytest.raises(ValueError, match="codes"):
            format_audio_codes(bad)


# --- 4. live diffusers parity -------------------------------------------------------------------------------

def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0))  # norms around 1


def test_diffusers_live_parity(cfg, silence):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    enc = cfg.encoder
    common = dict(
        hidden_size=enc.hidden_size, intermediate_size=enc.intermediate_size, audio_acoustic_hidden_dim=cfg.latent_dim,
        pool_window_size=cfg.pool_window_size, num_attention_pooler_hidden_layers=cfg.num_pooler_layers,
        num_attention_heads=enc.num_heads, num_key_value_heads=enc.num_kv_heads, head_dim=enc.head_dim,
        rope_theta=enc.rope_theta, rms_norm_eps=enc.rms_norm_eps, sliding_window=enc.sliding_window,
        layer_types=[f"{k}_attention" for k in enc.layer_types],
    )
    ref_tok = diffusers.AceStepAudioTokenizer(fsq_dim=enc.hidden_size, fsq_input_levels=list(cfg.fsq_levels),
                                              **common).eval()
    ref_detok = diffusers.AceStepAudioTokenDetokenizer(**common).eval()
    _randomize(ref_tok)
    _randomize(ref_detok)
    tok, detok = AudioTokenizer(cfg).eval(), AudioDetokenizer(cfg).eval()
    tok.load_state_dict(convert_component(ref_tok.state_dict(), "diffusers", "audio_tokenizer"))
    detok.load_state_dict(convert_component(ref_detok.state_dict(), "diffusers", "audio_detokenizer"))

    latents = torch.randn(2, 17, 64)  # 17 frames: 3 silence frames of padding
    with torch.no_grad():
        want_q, want_codes = ref_tok.tokenize(latents, silence)
        got_q, got_codes, mask5 = tok.tokenize(latents, silence)
        close(got_q, want_q)
        assert torch.equal(got_codes, want_codes[..., 0].long()) and mask5.all()
        close(tok.codes_to_quantized(got_codes), ref_tok.quantizer.get_output_from_indices(want_codes))
        close(detok(got_q), ref_detok(want_q))
