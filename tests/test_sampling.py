"""Sampler options (retake, cover noise, SDE, Heun, velocity clamp/EMA, ADG, DCW): official fixtures and loop rules."""

import math
from pathlib import Path

import pytest
import torch

from acestep_core import dcw, guidance, sampling
from acestep_core.generate import Condition, Guidance, Repaint, generate_latents
from acestep_core.safetensors_io import read_safetensors
from acestep_core.sampling import DCW, SamplerOptions

FIX = Path(__file__).parent / "fixtures"
SAMPLERS = FIX / "official_tiny_samplers" / "reference"
ATOL = 1e-4  # fp32, eight steps through a random tiny model


@pytest.fixture(scope="module")
def common():
    return read_safetensors(SAMPLERS / "common_inputs.safetensors")


def _case(name):
    return read_safetensors(SAMPLERS / f"{name}.safetensors")


def _condition(pipe, ref, common, src=None):
    """The official prepare_condition on the fixture tensors; `src` replaces src_latents in the context (cover)."""
    states, mask = pipe.condition_encoder(
        ref["text_hidden_states"], ref["text_attention_mask"], ref["lyric_hidden_states"], ref["lyric_attention_mask"],
        common["refer_audio_acoustic_hidden_states_packed"], common["refer_audio_order_mask"])
    chunk = ref["chunk_mask"].float()[..., None].expand(-1, -1, 64)  # [B, T] -> [B, T, 64]
    return Condition(states, mask, torch.cat([ref["src_latents"] if src is None else src, chunk], dim=-1))


def _close(out, ref):
    err = (out - ref["target_latents"]).abs().max().item()
    assert err <= ATOL, f"max abs error {err:.3g}"


def _turbo(pipe, ref, common, noise=None, **kw):
    return generate_latents(pipe.dit, ref["initial_noise"] if noise is None else noise,
                            sampling.turbo_schedule(8, 3.0), _condition(pipe, ref, common), turbo=True, **kw)


def _base(pipe, ref, common, guidance=Guidance(7.0), **kw):
    return generate_latents(pipe.dit, ref["initial_noise"], sampling.base_schedule(8, 3.0),
                            _condition(pipe, ref, common), guidance=guidance,
                            null_emb=pipe.condition_encoder.null_condition_emb, turbo=False, **kw)


# --- official fixtures ---------------------------------------------------------------------------------------

def test_retake_matches_official(turbo, common):
    ref = _case("turbo_retake")
    noise = sampling.mix_retake_noise(ref["initial_noise"], ref["retake_noise"], 0.3)
    _close(_turbo(turbo, ref, common, noise), ref)


def test_cover_noise_matches_official(turbo, common):
    ref = _case("turbo_cover_noise")
    src = ref["src_latents"]
    x, ts = sampling.cover_start(ref["initial_noise"], src, sampling.turbo_schedule(8, 3.0), 0.3)
    assert ts == pytest.approx([0.75, 0.6428571, 0.5, 0.3, 0.0], abs=1e-6)
    cond = _condition(turbo, ref, common, src=turbo.round_trip_fsq(src))  # is_covers = 1: FSQ round trip
    out = generate_latents(turbo.dit, ref["initial_noise"], ts, cond, start_latents=x, turbo=True)
    _close(out, ref)


def test_sde_matches_official(turbo, common):
    ref = _case("turbo_sde")
    draws = iter(ref["sde_noises"])  # [7, 1, T, 64]: the official's randn_like calls in order
    out = _turbo(turbo, ref, common, sampler=SamplerOptions(method="sde", sde_noise=lambda x: next(draws)))
    assert next(draws, None) is None  # the turbo loop draws once per non-final step
    _close(out, ref)
    # the recorded draws are the global generator's after manual_seed(2025), the official default source
    torch.manual_seed(2025)
    _close(_turbo(turbo, ref, common, sampler=SamplerOptions(method="sde")), ref)


def test_dcw_matches_official(turbo, common):
    ref = _case("turbo_dcw")
    out = _turbo(turbo, ref, common, sampler=SamplerOptions(dcw=DCW("double", 0.05, 0.02)))
    _close(out, ref)
    plain = _turbo(turbo, ref, common)
    assert (plain - ref["target_latents"]).abs().max() > 1e-3  # DCW is not a no-op here


def test_heun_apg_matches_official(base, common):
    ref = _case("base_heun_apg")
    _close(_base(base, ref, common, sampler=SamplerOptions(solver="heun")), ref)


def test_velocity_clamp_and_ema_match_official(base, common):
    ref = _case("base_velocity")
    _close(_base(base, ref, common, sampler=SamplerOptions(velocity_norm_threshold=0.7, velocity_ema=0.3)), ref)


def test_adg_matches_official(base, common):
    ref = _case("base_adg")
    _close(_base(base, ref, common, guidance=Guidance(7.0, adg=True)), ref)


def test_defaults_are_plain_euler(turbo, base, common):
    ref = _case("turbo_euler_baseline")
    _close(_turbo(turbo, ref, common, sampler=SamplerOptions()), ref)
    ref = _case("base_euler_apg_baseline")
    _close(_base(base, ref, common, sampler=SamplerOptions()), ref)


# --- loop rules with a fake velocity (fast) ------------------------------------------------------------------

def _recorder(calls, value=0.1):
    def velocity(x, t, i):
        calls.append(t)
        return torch.full_like(x, value)
    return velocity


def test_heun_last_step_base_evaluates_at_zero_turbo_jumps():
    ts = sampling.base_schedule(4, 3.0)
    x = torch.zeros(1, 6, 2)
    main, corr = [], []
    sampling.sample(_recorder(main), x, ts, turbo=False, options=SamplerOptions(solver="heun"),
                    corrector=_recorder(corr))
    assert main == ts[:-1] and corr == ts[1:] and corr[-1] == 0.0
    main, corr = [], []
    sampling.sample(_recorder(main), x, ts, turbo=True, options=SamplerOptions(solver="heun"),
                    corrector=_recorder(corr))
    assert main == ts[:-1] and corr == ts[1:-1]  # no corrector on the x0 jump


def test_sde_times_and_draws_differ_between_loops():
    ts = sampling.base_schedule(4, 3.0)
    seen = []
    opts = SamplerOptions(method="sde", sde_noise=lambda x: torch.zeros_like(x))
    after = lambda x, i, t: (seen.append(t), x)[1]  # noqa: E731
    sampling.sample(_recorder([]), torch.zeros(1, 4, 2), ts, turbo=False, options=opts, after_step=after)
    assert seen == [0.75, 0.5, 0.25, 0.0]  # base: 1 - (i + 1) / N whatever the shift
    seen.clear()
    sampling.sample(_recorder([]), torch.zeros(1, 4, 2), ts, turbo=True, options=opts, after_step=after)
    assert seen == ts[1:]
    draws = []
    counting = SamplerOptions(method="sde", sde_noise=lambda x: (draws.append(1), torch.zeros_like(x))[1])
    sampling.sample(_recorder([]), torch.zeros(1, 4, 2), ts, turbo=False, options=counting)
    assert len(draws) == 4  # base also draws on its last step (t = 0, discarded)
    draws.clear()
    sampling.sample(_recorder([]), torch.zeros(1, 4, 2), ts, turbo=True, options=counting)
    assert len(draws) == 3
    gen = SamplerOptions(method="sde", sde_noise=torch.Generator().manual_seed(0))
    a = sampling.sample(_recorder([]), torch.ones(1, 4, 2), ts, turbo=True, options=gen)
    assert a.shape == (1, 4, 2) and torch.isfinite(a).all()


def test_every_option_keeps_the_dtype():
    x = torch.randn(1, 7, 4, dtype=torch.bfloat16)
    velocity = lambda x, t, i: 0.5 * x  # noqa: E731
    for opts in (SamplerOptions(solver="heun", velocity_norm_threshold=0.7, velocity_ema=0.3, dcw=DCW()),
                 SamplerOptions(method="sde", dcw=DCW("pix"))):
        for turbo in (True, False):
            out = sampling.sample(velocity, x, sampling.base_schedule(3, 3.0), turbo=turbo, options=opts,
                                  corrector=velocity)
            assert out.dtype == torch.bfloat16 and out.shape == x.shape and torch.isfinite(out.float()).all()
    g = guidance.adg(x, 0.5 * x, 0.4 * x + 0.1, 0.5, 7.0)
    assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()


def test_velocity_clamp_bounds_the_norm():
    x, v = torch.randn(2, 5, 3), 10 * torch.randn(2, 5, 3)
    out = sampling.clamp_velocity(v, x, 0.5)
    ratio = out.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)  # [B, T, C] -> [B, T*C]
    assert torch.allclose(ratio, torch.full((2,), 0.5), atol=1e-5)
    small = 1e-3 * v
    assert torch.equal(sampling.clamp_velocity(small, x, 0.5), small)


@pytest.mark.parametrize("length", [1, 6, 7])
def test_haar_round_trip_and_bands(length):
    x = torch.randn(2, length, 3, dtype=torch.float64)
    lo, hi = dcw.haar_dwt(x)
    assert lo.shape == hi.shape == (2, (length + 1) // 2, 3)
    torch.testing.assert_close(dcw.haar_idwt(lo, hi, length), x)
    # orthonormal: energy is kept (the odd tail frame is paired with a zero)
    torch.testing.assert_close(lo.square().sum() + hi.square().sum(), x.square().sum())
    torch.testing.assert_close(lo[:, 0], (x[:, 0] + (x[:, 1] if length > 1 else 0)) / 2 ** 0.5)


def test_dcw_modes():
    x, y = torch.randn(1, 8, 4), torch.randn(1, 8, 4)
    # a constant signal has no high band: "high" leaves it alone, "low" moves it by t * scaler
    c, d = torch.ones(1, 8, 2), torch.zeros(1, 8, 2)
    torch.testing.assert_close(dcw.dcw_correct(c, d, 0.5, DCW("high", 0.1)), c)
    torch.testing.assert_close(dcw.dcw_correct(c, d, 0.5, DCW("low", 0.1)), 1.05 * c)
    # double = low then high; the bands are independent
    both = dcw.dcw_correct(x, y, 0.3, DCW("double", 0.05, 0.02))
    lo, _ = dcw.haar_dwt(dcw.dcw_correct(x, y, 0.3, DCW("low", 0.05)))
    _, hi = dcw.haar_dwt(dcw.dcw_correct(x, y, 0.3, DCW("high", 0.02)))
    torch.testing.assert_close(both, dcw.haar_idwt(lo, hi, 8))
    torch.testing.assert_close(dcw.dcw_correct(x, y, 0.3, DCW("pix", 0.1)), x + 0.1 * (x - y))
    torch.testing.assert_close(dcw.dcw_correct(x, x, 0.3, DCW()), x)  # x0 = x: nothing to push against
    odd = torch.randn(1, 9, 4)  # odd T: the zero-padded tail frame is corrected too, then cropped
    assert dcw.dcw_correct(odd, torch.zeros_like(odd), 0.3, DCW()).shape == odd.shape


def test_retake_and_cover_start():
    a, b = torch.randn(1, 4, 2), torch.randn(1, 4, 2)
    assert sampling.mix_retake_noise(a, b, 0.0) is a
    torch.testing.assert_close(sampling.mix_retake_noise(a, b, 1.0), b, atol=1e-7, rtol=0)
    ts = sampling.base_schedule(4, 1.0)  # [1, .75, .5, .25, 0]
    x, rest = sampling.cover_start(a, b, ts, 0.6)  # nearest to 0.4 -> 0.5
    assert rest == [0.5, 0.25, 0.0]
    torch.testing.assert_close(x, 0.5 * a + 0.5 * b)
    _, rest = sampling.cover_start(a, b, ts, 1.0)  # never the final 0
    assert rest == [0.25, 0.0]
    assert sampling.cover_start(a, b, ts, 0.0) == (a, ts)


def test_adg_when_the_predictions_agree():
    """Equal predictions: no perpendicular part, and the angle clamp (cos <= 1 - 1e-6) leaves a tiny
    rotation, cos(6.001 * acos(1 - 1e-6)), that shrinks x0 slightly (official behaviour)."""
    x, v = torch.randn(1, 5, 4, dtype=torch.float64), torch.randn(1, 5, 4, dtype=torch.float64)
    shrink = math.cos(6.001 * math.acos(1 - 1e-6))
    torch.testing.assert_close(guidance.adg(x, v, v, 0.5, 7.0), (x - shrink * (x - 0.5 * v)) / 0.5)
    with pytest.raises(ValueError, match="t"):
        guidance.adg(x, v, v, 0.0, 7.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="ddim"), "method"),
    (dict(solver="rk4"), "solver"),
    (dict(method="sde", solver="heun"), "solver"),
    (dict(velocity_norm_threshold=-1.0), "velocity_norm_threshold"),
    (dict(velocity_ema=1.0), "velocity_ema"),
    (dict(dcw="double"), "dcw"),
])
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerOptions(**kwargs)


def test_bad_inputs_name_the_argument():
    a = torch.zeros(1, 4, 2)
    with pytest.raises(ValueError, match="mode"):
        DCW("band")
    with pytest.raises(ValueError, match="retake_noise"):
        sampling.mix_retake_noise(a, torch.zeros(1, 5, 2), 0.5)
    with pytest.raises(ValueError, match="variance"):
        sampling.mix_retake_noise(a, a, 1.5)
    with pytest.raises(ValueError, match="src_latents"):
        sampling.cover_start(a, torch.zeros(1, 4, 3), [1.0, 0.0], 0.5)
    with pytest.raises(ValueError, match="strength"):
        sampling.cover_start(a, a, [1.0, 0.0], 2.0)
    with pytest.raises(ValueError, match="corrector"):
        sampling.sample(_recorder([]), a, [1.0, 0.0], turbo=True, options=SamplerOptions(solver="heun"))
    with pytest.raises(ValueError, match="x"):
        sampling.sample(_recorder([]), torch.zeros(4, 2), [1.0, 0.0], turbo=True)
    with pytest.raises(ValueError, match="denoised"):
        dcw.dcw_correct(a, torch.zeros(1, 3, 2), 0.5, DCW())
    bad = SamplerOptions(method="sde", sde_noise=lambda x: torch.zeros(3))
    with pytest.raises(ValueError, match="sde_noise"):
        sampling.sample(_recorder([]), a, [1.0, 0.5, 0.0], turbo=True, options=bad)


# --- turbo vs base: where repaint injection stops ------------------------------------------------------------

def test_base_loop_injects_on_its_last_step(turbo, common):
    """Injection ratio 1 (official "conservative" repaint): the base loop re-noises to t = 0 on its last step,
    so outside the window the result is exactly the source; the turbo loop stops on its x0 jump first."""
    ref = _case("turbo_repaint")
    mask = ref["repaint_mask"].bool()
    repaint = Repaint(mask, ref["clean_src_latents"], injection_ratio=1.0, crossfade_frames=0)
    ts = sampling.turbo_schedule(2, 3.0)
    cond = _condition(turbo, ref, common)
    outside = ~mask[..., None].expand_as(ref["clean_src_latents"])  # [B, T] -> [B, T, C]
    base_loop = generate_latents(turbo.dit, ref["initial_noise"], ts, cond, repaint=repaint, turbo=False)
    assert torch.equal(base_loop[outside], ref["clean_src_latents"][outside])
    turbo_loop = generate_latents(turbo.dit, ref["initial_noise"], ts, cond, repaint=repaint, turbo=True)
    assert (turbo_loop[outside] - ref["clean_src_latents"][outside]).abs().max() > 1e-3


def test_dpm_solver_2m_matches_a_hand_computed_two_step_case():
    """timesteps 0.8 -> 0.5 -> 0.2 with v = 0.3 x + 0.1 t (alpha = 1 - t, sigma = t, lambda = log(alpha/sigma)).

    step 0: h = lambda(0.5) - lambda(0.8) = log 4, first order:
        x1 = (0.5 / 0.8) x - 0.5 (1/4 - 1) x0_0 = 0.625 x + 0.375 x0_0,          x0_0 = x - 0.8 v(x, 0.8)
    step 1: h = log 4 again, r = 1, D = 1.5 x0_1 - 0.5 x0_0:
        x2 = (0.2 / 0.5) x1 - 0.8 (1/4 - 1) D = 0.4 x1 + 0.6 D,                 x0_1 = x1 - 0.5 v(x1, 0.5)
    """
    def v(x, t, i=None):
        return 0.3 * x + 0.1 * t

    x = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]], dtype=torch.float64)  # [1, 2, 2]
    x0_0 = x - 0.8 * v(x, 0.8)
    x1 = 0.625 * x + 0.375 * x0_0
    x0_1 = x1 - 0.5 * v(x1, 0.5)
    expected = 0.4 * x1 + 0.6 * (1.5 * x0_1 - 0.5 * x0_0)
    out = sampling.sample(v, x, [0.8, 0.5, 0.2], turbo=False, options=SamplerOptions(solver="dpm++2m"))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_dpm_solver_2m_from_t1_starts_like_euler_and_ends_on_x0():
    def v(x, t, i=None):
        return 0.3 * x + 0.1 * t

    x = torch.randn(1, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ts = [1.0, 0.6, 0.0]
    euler = sampling.sample(v, x, ts[:2], turbo=False)
    dpm = sampling.sample(v, x, ts[:2], turbo=False, options=SamplerOptions(solver="dpm++2m"))
    torch.testing.assert_close(dpm, euler, atol=1e-12, rtol=0)
    full = sampling.sample(v, x, ts, turbo=False, options=SamplerOptions(solver="dpm++2m"))
    torch.testing.assert_close(full, euler - 0.6 * v(euler, 0.6), atol=1e-12, rtol=0)


def test_every_solver_in_the_table_runs_and_sde_takes_only_euler():
    for name in sampling.ODE_SOLVERS:
        opts = SamplerOptions(solver=name)
        x = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(1))
        out = sampling.sample(lambda x, t, i: 0.5 * x, x, [1.0, 0.5, 0.0], turbo=False, options=opts,
                              corrector=lambda x, t, i: 0.5 * x)
        assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="solver"):
        SamplerOptions(method="sde", solver="dpm++2m")
