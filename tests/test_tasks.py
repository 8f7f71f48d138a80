"""Request -> task inputs: the official rules and, where diffusers differs, both (docs/parity.md)."""

import pytest
import torch

from acestep_core import sampling, tasks
from acestep_core.behaviour import DIFFUSERS
from acestep_core.generate import Guidance

RATE, HOP = 48000, 1920


def test_latent_length_official_vs_diffusers():
    assert tasks.latent_length(10, RATE, HOP) == 250
    assert tasks.latent_length(7.77, RATE, HOP) == 195  # rounded to 0.1 s first
    assert tasks.latent_length(3, RATE, HOP) == 128  # official minimum
    assert tasks.latent_length(None, RATE, HOP) == 3000  # official fallback: 120 s
    assert tasks.latent_length(3, RATE, HOP, DIFFUSERS) == 75  # ceil(d * 25), no minimum
    assert tasks.latent_length(7.77, RATE, HOP, DIFFUSERS) == 195


def test_repaint_frames_and_clamping():
    assert tasks.repaint_frames(2.0, 4.0, 150, RATE, HOP) == (50, 100)
    assert tasks.repaint_frames(-1.0, 400.0, 150, RATE, HOP) == (0, 150)
    assert tasks.repaint_frames(149.9, 150.0, 150, RATE, HOP) == (149, 150)
    assert tasks.repaint_frames(2.0, 4.0, 150, RATE, HOP, DIFFUSERS) == (50, 100)


def test_silence_tiling_restarts_at_frame_zero():
    silence = torch.arange(5.0)[None, :, None].expand(1, 5, 2)  # [1, 5, 2]
    assert tasks.tile_silence(silence, 12)[:, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    src = torch.full((3, 2), 9.0)
    assert tasks.pad_with_silence(src, 6, silence)[:, 0].tolist() == [9, 9, 9, 0, 1, 2]


def test_chunk_mask_auto_is_all_ones_explicit_keeps_window():
    silence = torch.randn(1, 40, 4)
    source = torch.randn(2, 30, 4)
    auto = tasks.build_task_inputs("repaint", 30, 2, silence, source=source, window=(5, 10))
    explicit = tasks.build_task_inputs("repaint", 30, 2, silence, source=source, window=(5, 10),
                                       chunk_mask_mode="explicit")
    assert bool((auto.chunk_mask == 1).all())  # official default "auto": the window row is overwritten with ones
    assert explicit.chunk_mask[0, 5:10].tolist() == [1.0] * 5 and explicit.chunk_mask[0, :5].sum() == 0
    # repaint: window replaced by the position-aligned silence; outside kept; lego keeps the source
    torch.testing.assert_close(auto.src_latents[:, 5:10], silence[0, 5:10].expand(2, -1, -1))
    torch.testing.assert_close(auto.src_latents[:, 10:], source[:, 10:])
    lego = tasks.build_task_inputs("lego", 30, 2, silence, source=source, window=(5, 10))
    torch.testing.assert_close(lego.src_latents, source)
    assert lego.repaint_mask[0, 5:10].all() and not lego.repaint_mask[0, :5].any()


def test_cover_flags_and_text2music_context():
    silence = torch.randn(1, 40, 4)
    t2m = tasks.build_task_inputs("text2music", 50, 1, silence)
    torch.testing.assert_close(t2m.src_latents[0], tasks.tile_silence(silence, 50))
    assert not t2m.is_cover.any() and t2m.repaint_mask is None
    cover = tasks.build_task_inputs("cover", 30, 1, silence, source=torch.randn(1, 30, 4))
    assert cover.is_cover.all()
    nofsq = tasks.build_task_inputs("cover-nofsq", 30, 1, silence, source=torch.randn(1, 30, 4))
    assert not nofsq.is_cover.any()


def test_cfg_interval_conventions():
    official, mirrored = Guidance(5.0, (0.0, 0.4)), Guidance(5.0, (0.0, 0.4), "1-t")
    assert official.active(0.3) and not official.active(0.9)
    assert mirrored.active(0.9) and not mirrored.active(0.3)  # diffusers compares 1 - t


def test_base_schedule_shift_and_custom():
    ts = sampling.base_schedule(4, 3.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and len(ts) == 5
    assert ts[2] == pytest.approx(sampling.shift_time(0.5, 3.0), abs=1e-7)
    assert sampling.base_schedule(0, 1.0, [1.0, 0.5]) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="decreasing"):
        sampling.validate_schedule([1.0, 0.5, 0.7, 0.0])
