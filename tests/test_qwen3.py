"""Qwen3 caption encoder: live parity vs transformers, frozen parity vs the official fixture, bf16, errors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep_core.qwen3 import Qwen3Encoder
from acestep_core.convert.configs import qwen3_from_transformers
from acestep_core.convert.convert import convert_component

FIXTURE = Path(__file__).parent / "fixtures" / "official_tiny_turbo"
QWEN_DIR = FIXTURE / "checkpoints" / "Qwen3-Embedding-0.6B"


def _load(folder: Path, source: str) -> Qwen3Encoder:
    cfg = qwen3_from_transformers(json.loads((folder / "config.json").read_text()), str(folder))
    model = Qwen3Encoder(cfg)
    sd = convert_component(load_file(folder / "model.safetensors"), source, "text_encoder")
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def official():
    return _load(QWEN_DIR, "official"), load_file(FIXTURE / "reference" / "text_encoder.safetensors")


def test_parameter_names_match_the_checkpoint_layout(official):
    model, _ = official
    names = set(model.state_dict())
    expected = {"embed_tokens.weight", "norm.weight"}
    for i in range(model.cfg.num_layers):
        expected |= {f"layers.{i}.{n}.weight" for n in (
            "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert names == expected


def test_live_parity_with_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen3Config(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6,  # head_dim 16 != 32 / 4
    )
    hf = transformers.Qwen3Model(hf_cfg)
    # Re-draw every weight (norms around 1) so that no parameter is a no-op and a mix-up would show.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    hf.eval()
    ours = _load(tmp_path, "transformers")
    assert ours.cfg.head_dim * ours.cfg.num_heads != ours.cfg.hidden_size

    lengths = (9, 5)
    ids = torch.full((2, max(lengths)), 96, dtype=torch.int64)  # 96 plays the pad id
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(0, 96, (n,))
    with torch.no_grad():
        # As the official handler: right-padded batch, no attention mask.
        ref = hf(input_ids=ids).last_hidden_state
        out = ours(ids)
        # Causal attention: valid positions equal encoding the item alone ...
        alone = ours(ids[1:, : lengths[1]])
        ref_alone = hf(input_ids=ids[1:, : lengths[1]]).last_hidden_state
        emb = ours.embed(ids)
    # ... and padded positions (pad tokens attending to the prompt) match transformers too, which matters
    # because the DiT's cross-attention does not mask them.
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, ref_alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1:, : lengths[1]], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(emb, hf.embed_tokens(ids).detach(), atol=0, rtol=0)


def test_frozen_parity_with_official_fixture(official):
    model, ref = official
    with torch.no_grad():
        text = model(ref["text_token_ids"])
        lyric = model.embed(ref["lyric_token_ids"])
    torch.testing.assert_close(text, ref["text_hidden_states"], atol=1e-5, rtol=0)
    torch.testing.assert_close(lyric, ref["lyric_hidden_states"], atol=1e-5, rtol=0)


def test_bf16_close_to_fp32(official):
    model, ref = official
    ids = ref["text_token_ids"]
    with torch.no_grad():
        fp32 = model(ids)
        bf16 = model.to(torch.bfloat16)(ids)
        model.float()
    assert bf16.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(bf16.float(), fp32, dim=-1)  # [B, L], one per position
    assert cos.min().item() >= 0.999


@pytest.mark.parametrize("bad, match", [
    ([[1, 2, 3]], "torch.Tensor"),
    (torch.tensor([[1.0, 2.0]]), "integer"),
    (torch.tensor([[True, False]]), "integer"),
    (torch.tensor([1, 2, 3]), r"\[B, L\]"),
    (torch.ones(1, 2, 3, dtype=torch.int64), r"\[B, L\]"),
    (torch.ones(1, 0, dtype=torch.int64), r"\[B, L\]"),
    (torch.tensor([[1, 612]]), r"\[0, 612\)"),
    (torch.tensor([[-1, 2]]), r"\[0, 612\)"),
])
def test_bad_input_ids(official, bad, match):
    model, _ = official
    with pytest.raises(ValueError, match=match):
        model(bad)
    with pytest.raises(ValueError, match=match):
        model.embed(bad)
