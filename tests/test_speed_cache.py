"""Work that does not depend on the request is done once: the silence reference's timbre encoding per
pipeline, RoPE tables and masks per length in the DiT. Results stay bit-identical to computing them anew."""

from pathlib import Path

import torch

from acestep_core.pipeline import load_pipeline

CKPT = Path(__file__).parent / "fixtures" / "official_tiny_turbo" / "checkpoints"


def _count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_silence_timbre_is_encoded_once_and_equals_the_direct_encoding():
    pipe = load_pipeline(CKPT)
    calls = _count_calls(pipe.condition_encoder.timbre_encoder)
    a = pipe(prompt="pop", lyrics="la", audio_duration=6, seed=0, output_type="latent").latents
    b = pipe(prompt=["rock", "jazz"], lyrics=["a", "b"], audio_duration=6, seed=[1, 2], output_type="latent").latents
    assert len(calls) == 1 and a.shape[0] == 1 and b.shape[0] == 2
    # The cached path and the old one (the silence latents through the encoder for every item) agree bit for bit.
    text, tmask, lyric, lmask = pipe.encode_text(["pop", "rock"], ["la", "la la"])
    order = torch.arange(2)
    cached = pipe._condition(text, tmask, lyric, lmask, None, order)
    silence = pipe.silence_latent[:, :pipe.config.condition.timbre_fix_frame].expand(2, -1, -1).contiguous()
    direct = pipe.condition_encoder(text, tmask, lyric, lmask, silence, order)
    assert all(torch.equal(x, y) for x, y in zip(cached, direct))


def test_timbre_embeds_are_checked():
    pipe = load_pipeline(CKPT)
    text, tmask, lyric, lmask = pipe.encode_text(["pop"], ["la"])
    width = pipe.config.condition.encoder.hidden_size
    for bad, message in ((torch.zeros(1, width + 1), "timbre_embeds"), (torch.zeros(2, width), "refer_order")):
        try:
            pipe.condition_encoder(text, tmask, lyric, lmask, None, torch.arange(1), timbre_embeds=bad)
        except ValueError as e:
            assert message in str(e)
        else:
            raise AssertionError("bad timbre_embeds accepted")


def test_dit_position_tables_are_cached_per_length():
    pipe = load_pipeline(CKPT)
    dit = pipe.dit
    first = dit.position_tables(16, torch.float32, "cpu")
    assert dit.position_tables(16, torch.float32, "cpu") is first  # same objects: built once
    assert dit.position_tables(17, torch.float32, "cpu") is not first
    x = torch.randn(1, 40, dit.cfg.latent_dim)
    ctx = torch.randn(1, 40, dit.context_dim)
    cond = torch.randn(1, 9, dit.cfg.condition_dim)
    t = torch.full((1,), 0.5)
    cached = dit(x, t, t, cond, ctx)
    dit._positions.clear()
    assert torch.equal(dit(x, t, t, cond, ctx), cached)
    for n in range(20):  # bounded: long sessions with many lengths do not grow without limit
        dit.position_tables(100 + n, torch.float32, "cpu")
    assert len(dit._positions) <= 8
