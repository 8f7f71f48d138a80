"""DiT parity and behaviour tests: official frozen fixture, live diffusers, K/V reuse, masks, bf16, XL width."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep_core.config import DiTConfig
from acestep_core.dit import DiT, CrossKV
from acestep_core.convert.convert import convert_component

FIXTURES = Path(__file__).parent / "fixtures"
TURBO = FIXTURES / "official_tiny_turbo"
CHECKPOINT = TURBO / "checkpoints" / "acestep-v15-turbo"
KINDS = {"sliding_attention": "sliding", "full_attention": "full"}


def dit_config_from_official(c: dict) -> DiTConfig:
    """The fixture's official config.json fields that shape the DiT (built by hand, independent of weights_convert)."""
    assert c["use_sliding_window"]
    return DiTConfig(
        hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_heads=c["num_attention_heads"], num_kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        rope_theta=float(c["rope_theta"]), rms_norm_eps=c["rms_norm_eps"], sliding_window=c["sliding_window"],
        layer_types=tuple(KINDS[t] for t in c["layer_types"]), patch_size=c["patch_size"],
        in_channels=c["in_channels"], latent_dim=c["audio_acoustic_hidden_dim"],
        condition_dim=c.get("encoder_hidden_size") or c["hidden_size"],
    )


@pytest.fixture(scope="module")
def official_dit() -> DiT:
    cfg = dit_config_from_official(json.loads((CHECKPOINT / "config.json").read_text()))
    model = DiT(cfg).eval()
    model.load_state_dict(convert_component(load_file(CHECKPOINT / "model.safetensors"), "official", "dit"))
    return model


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(TURBO / "reference" / "dit_forward.safetensors")


def run(model: DiT, r: dict, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(r["hidden_states"], r["timestep"], r["timestep_r"], r["encoder_hidden_states"],
                     r["context_latents"], **kw)


# --- 1. frozen official parity ------------------------------------------------------------------------------

def test_official_velocity_parity(official_dit, ref):
    v = run(official_dit, ref)
    assert v.shape == ref["velocity"].shape == (2, 41, 64)
    torch.testing.assert_close(v, ref["velocity"], rtol=0, atol=1e-5)


def test_masks_match_official(official_dit, ref):
    num_patches = -(-ref["hidden_states"].shape[1] // official_dit.cfg.patch_size)  # 41 frames -> 21 patches
    assert num_patches == ref["mask_sliding_attention"].shape[-1] == 21
    masks = official_dit.self_attention_masks(num_patches, torch.float32, "cpu")
    assert torch.equal(masks["sliding"], ref["mask_sliding_attention"])
    # The official passes all-zero additive masks where we pass None (no masking at all).
    assert masks["full"] is None and not ref["mask_full_attention"].any()
    assert official_dit.prepare_condition(ref["encoder_hidden_states"]).mask is None
    assert not ref["mask_cross_attention"].any()
    # A window that covers every pair needs no mask.
    assert official_dit.self_attention_masks(9, torch.float32, "cpu")["sliding"] is None


# --- 2. live diffusers parity -------------------------------------------------------------------------------

def tiny_config(**overrides) -> DiTConfig:
    base = dict(hidden_size=48, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e6,
                rms_norm_eps=1e-6, sliding_window=4, layer_types=("sliding", "full", "sliding", "full"),
                patch_size=2, in_channels=192, latent_dim=64, condition_dim=48)
    return DiTConfig(**{**base, **overrides})


def diffusers_twin(cfg: DiTConfig, seed: int):
    """A diffusers AceStepTransformer1DModel of the same shape with every parameter re-drawn."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.AceStepTransformer1DModel(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        in_channels=cfg.in_channels, audio_acoustic_hidden_dim=cfg.latent_dim, patch_size=cfg.patch_size,
        rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, sliding_window=cfg.sliding_window,
        layer_types=[f"{k}_attention" for k in cfg.layer_types], encoder_hidden_size=cfg.condition_dim,
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            # Norm weights stay near 1; matrices get 1/sqrt(fan-in) so activations stay O(1).
            if "norm" in name:
                p.copy_(1 + 0.2 * noise)
            elif p.dim() >= 2 and "scale_shift_table" not in name:
                p.copy_(noise * (p.numel() // p.shape[0]) ** -0.5)
            else:  # biases and AdaLN tables
                p.copy_(0.2 * noise)
    ours = DiT(cfg).eval()
    ours.load_state_dict(convert_component(ref.state_dict(), "diffusers", "dit"))
    return ref, ours


def random_inputs(cfg: DiTConfig, b: int, t: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(b, t, cfg.latent_dim, generator=g),
        "timestep": torch.rand(b, generator=g),
        "timestep_r": torch.rand(b, generator=g) * 0.5,  # r != t exercises time_embed_r on a non-zero input
        "encoder_hidden_states": torch.randn(b, length, cfg.condition_dim, generator=g),
        "context_latents": torch.randn(b, t, cfg.in_channels - cfg.latent_dim, generator=g),
    }


def test_diffusers_parity_padded_condition():
    cfg = tiny_config()
    ref, ours = diffusers_twin(cfg, seed=0)
    x = random_inputs(cfg, b=2, t=23, length=11, seed=1)  # T odd: 23 frames -> 12 patches, window 4 masks
    # Item 1 has a shorter condition: 7 real tokens, 4 padded ones (garbage, like packed padding).
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        want = ref(**x, return_dict=False)[0]
        got = run(ours, x)  # default = official = diffusers: the padding is attended to
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # diffusers has no condition mask at all; with ours blocking the padding, item 0 (no padding) is unchanged.
    with torch.no_grad():
        masked = run(ours, x, encoder_attention_mask=mask)
    torch.testing.assert_close(masked[0], want[0], rtol=0, atol=1e-5)
    assert not torch.allclose(masked[1], want[1], atol=1e-3)


# --- 3. cross-attention K/V reuse and the optional condition mask --------------------------------------------

def test_cross_kv_reuse_is_identical(official_dit, ref):
    kv = official_dit.prepare_condition(ref["encoder_hidden_states"])
    assert isinstance(kv, CrossKV) and len(kv.kv) == official_dit.cfg.num_layers
    with torch.no_grad():
        on_the_fly = run(official_dit, ref)
        reused = official_dit(ref["hidden_states"], ref["timestep"], ref["timestep_r"], None,
                              ref["context_latents"], cross_kv=kv)
        # Same K/V, a different step: still identical to computing the condition on the fly.
        t2 = ref["timestep"] * 0.5
        step2 = official_dit(ref["hidden_states"], t2, t2, None, ref["context_latents"], cross_kv=kv)
        step2_fly = official_dit(ref["hidden_states"], t2, t2, ref["encoder_hidden_states"], ref["context_latents"])
    assert torch.equal(reused, on_the_fly)
    assert torch.equal(step2, step2_fly)


def test_condition_mask_makes_padding_irrelevant(official_dit, ref):
    mask = ref["encoder_attention_mask"]  # item 1: 9 real tokens, then 4 padded ones
    real = int(mask[1].sum())
    assert real < mask.shape[1]
    cond = ref["encoder_hidden_states"].clone()
    cond[1, real:] = 100 * torch.randn(mask.shape[1] - real, cond.shape[-1])  # loud garbage in the padding
    x = {**ref, "encoder_hidden_states": cond}
    masked = run(official_dit, x, encoder_attention_mask=mask)
    alone = {k: ref[k][1:] for k in ("hidden_states", "timestep", "timestep_r", "context_latents")}
    alone["encoder_hidden_states"] = ref["encoder_hidden_states"][1:, :real]
    torch.testing.assert_close(masked[1:], run(official_dit, alone), rtol=0, atol=1e-5)
    # Item 0 has no padding: the mask changes nothing and the official output is kept.
    torch.testing.assert_close(masked[0], ref["velocity"][0], rtol=0, atol=1e-5)
    # The same mask through prepare_condition.
    kv = official_dit.prepare_condition(cond, mask)
    with torch.no_grad():
        via_kv = official_dit(ref["hidden_states"], ref["timestep"], ref["timestep_r"], None,
                              ref["context_latents"], cross_kv=kv)
    assert torch.equal(via_kv, masked)


# --- 4. bf16 ---------------------------------------------------------------------------------------------------

def test_bf16_close_to_fp32(official_dit, ref):
    model = DiT(official_dit.cfg).eval()
    model.load_state_dict(official_dit.state_dict())
    model.to(torch.bfloat16)
    x = {k: ref[k].to(torch.bfloat16) for k in ("hidden_states", "encoder_hidden_states", "context_latents")}
    # Timesteps stay float32: a bf16 t is itself rounded (0.9545 -> 0.9531, then t * 1000 in bf16), which the
    # official sampler does but which is an input change, not the model's bf16 error.
    v = run(model, {**x, "timestep": ref["timestep"], "timestep_r": ref["timestep_r"]})
    assert v.dtype == torch.bfloat16 and v.shape == ref["velocity"].shape
    cos = torch.nn.functional.cosine_similarity(v.float().flatten(), ref["velocity"].flatten(), dim=0)
    assert cos >= 0.999, float(cos)
    # bf16 timesteps (the official sampler's choice) are accepted too.
    v16 = run(model, {**x, "timestep": ref["timestep"].bfloat16(), "timestep_r": ref["timestep_r"].bfloat16()})
    assert v16.dtype == torch.bfloat16 and torch.isfinite(v16).all()


# --- 5. XL: condition width != DiT width -------------------------------------------------------------------

def test_xl_condition_width():
    cfg = tiny_config(condition_dim=32)
    model = DiT(cfg).eval()
    assert model.condition_embedder.weight.shape == (48, 32)
    assert model.layers[0].cross_attn.k_proj.weight.shape == (2 * 16, 48)  # K/V read the embedded condition
    x = random_inputs(cfg, b=2, t=10, length=5, seed=2)
    v = run(model, x)
    assert v.shape == (2, 10, 64) and torch.isfinite(v).all()


def test_xl_diffusers_parity():
    cfg = tiny_config(condition_dim=32)
    ref, ours = diffusers_twin(cfg, seed=3)
    x = random_inputs(cfg, b=2, t=10, length=5, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(run(ours, x), ref(**x, return_dict=False)[0], rtol=0, atol=1e-5)


# --- parameter names at real size --------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["turbo", "xl_turbo"])
def test_real_size_keys_and_shapes(variant):
    """Our state dict equals the converted official `decoder.*` keys, names and shapes, at full size."""
    info = json.loads((FIXTURES / "keys" / f"official_{variant}_keys.json").read_text())
    cfg = dit_config_from_official(info["config"])
    with torch.device("meta"):
        model = DiT(cfg)
        official = {e["name"]: torch.empty(e["shape"]) for e in info["state_dict"]}
    converted = convert_component(official, "official", "dit")
    ours = model.state_dict()
    assert sorted(ours) == sorted(converted)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in converted.items()}


# --- 6. bad inputs -----------------------------------------------------------------------------------------------

def test_bad_inputs_raise_value_errors(official_dit, ref):
    m = official_dit
    x = dict(ref)
    kv = m.prepare_condition(ref["encoder_hidden_states"])

    def call(**kw):
        args = {k: x[k] for k in ("hidden_states", "timestep", "timestep_r", "encoder_hidden_states",
                                  "context_latents")}
        args.update(kw)
        with torch.no_grad():
            return m(**args)

    cases = [
        ("hidden_states", dict(hidden_states=x["hidden_states"][..., :32])),
        ("context_latents", dict(context_latents=x["context_latents"][:, :40])),
        ("timestep", dict(timestep=x["timestep"][:1])),
        ("timestep_r", dict(timestep_r=torch.ones(2, dtype=torch.long))),
        ("encoder_hidden_states", dict(encoder_hidden_states=x["encoder_hidden_states"][..., :40])),
        ("encoder_attention_mask", dict(encoder_attention_mask=x["encoder_attention_mask"][:, :5])),
        ("cross_kv", dict(encoder_hidden_states=None, cross_kv=kv, encoder_attention_mask=x["encoder_attention_mask"])),
        ("batch", dict(encoder_hidden_states=None, cross_kv=m.prepare_condition(ref["encoder_hidden_states"][:1]))),
        ("dtype", dict(hidden_states=x["hidden_states"].double())),
    ]
    for match, kw in cases:
        with pytest.raises(ValueError, match=match):
            call(**kw)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        call(encoder_hidden_states=None)
    with pytest.raises(ValueError, match="cross_kv"):
        call(cross_kv=kv)  # both the raw condition and prepared K/V
    with pytest.raises(ValueError, match="layer_types"):
        DiT(dataclasses.replace(m.cfg, layer_types=("sliding", "global", "sliding", "full")))


def test_banded_sliding_window_equals_dense(official_dit, monkeypatch):
    """Long songs use block-banded attention on sliding layers; it must equal the dense mask."""
    import acestep_core.dit as dit_module
    from acestep_core.layers import BandedMask

    gen = torch.Generator().manual_seed(3)
    t = 181  # 91 patches, window 8: several blocks, ragged last block
    args = (torch.randn(2, t, 64, generator=gen), torch.tensor([0.7, 0.3]), torch.tensor([0.7, 0.3]),
            torch.randn(2, 13, 48, generator=gen), torch.randn(2, t, 128, generator=gen))
    dense = official_dit(*args)
    monkeypatch.setattr(dit_module, "BANDED_MIN_PATCHES", 16)
    monkeypatch.setattr(dit_module, "BANDED_BLOCK", 20)
    assert isinstance(official_dit.self_attention_masks(91, torch.float32, "cpu")["sliding"], BandedMask)
    torch.testing.assert_close(official_dit(*args), dense, atol=1e-5, rtol=0)
