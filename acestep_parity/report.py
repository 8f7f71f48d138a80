"""The parity report's numbers: per-stage metrics, pass/fail thresholds, the table and the JSON.

Used by `acestep_parity.engine` (which runs the two implementations); kept apart so the metrics can be read
and reused on their own.
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict, dataclass, field

import torch

from acestep_core import __version__ as OURS_VERSION

SCHEMA = "acestep-parity/1"
SCHEDULE_ATOL = 1e-6  # the DiT's time inputs must agree to float32 rounding
STFT_SIZES = (512, 1024, 2048)
MAX_SNR_DB = 300.0  # reported for identical signals (JSON has no infinity)
NOTES = {  # the table's note on how ours runs, by meta["compat"]
    "diffusers": ('ours runs with compat="diffusers" so that the documented official/diffusers differences are '
                  "not reported as failures (docs/parity.md)"),
    "official": "ours runs with its default behaviour, the official one (compat=\"official\")",
}


def environment() -> dict:
    """Our version and the versions both sides share, for the report's header."""
    return {"ours_version": OURS_VERSION,
            "versions": {"acestep-core": OURS_VERSION, "torch": torch.__version__, "python": platform.python_version()}}


# --- metrics ----------------------------------------------------------------------------------------------

def _f64(x: torch.Tensor) -> torch.Tensor:
    # float64 on the CPU: the metric must not add rounding error of its own.
    return x.detach().to(device="cpu", dtype=torch.float64)


def tensor_metrics(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    """max |ours - ref|, that max over the reference's std (its max |value| when constant), cosine."""
    a, b = _f64(ours).flatten(), _f64(ref).flatten()
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.std().item() if b.numel() > 1 else 0.0
    scale = scale if scale > 0 else (b.abs().max().item() if b.numel() else 0.0)
    rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
    na, nb = a.norm().item(), b.norm().item()
    cos = (a @ b).item() / (na * nb) if na > 0 and nb > 0 else float(na == nb)
    return {"max_abs": err, "max_rel": rel, "cosine": cos}


def snr_db(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """10 log10(reference energy / error energy), capped at MAX_SNR_DB."""
    a, b = _f64(ours), _f64(ref)
    signal, noise = (b * b).sum().item(), ((a - b) ** 2).sum().item()
    if noise == 0:
        return MAX_SNR_DB
    return -MAX_SNR_DB if signal == 0 else min(MAX_SNR_DB, 10 * math.log10(signal / noise))


def stft_distance(ours: torch.Tensor, ref: torch.Tensor, sizes=STFT_SIZES) -> float | None:
    """Mean over FFT sizes of spectral convergence + mean |log-magnitude difference| (0 = identical).

    Audio [..., S]; sizes longer than the audio are skipped (None when all are)."""
    # float32 on the CPU: a distance needs no float64, and the spectrograms of a whole song are large.
    a = ours.detach().to(device="cpu", dtype=torch.float32).reshape(-1, ours.shape[-1])  # [..., S] -> [channels, S]
    b = ref.detach().to(device="cpu", dtype=torch.float32).reshape(-1, ref.shape[-1])
    total, used = 0.0, 0
    for n in sizes:
        if a.shape[-1] < n:
            continue
        window = torch.hann_window(n)
        ma, mb = (torch.stft(x, n, hop_length=n // 4, window=window, return_complex=True).abs() for x in (a, b))
        convergence = torch.linalg.norm(mb - ma) / torch.linalg.norm(mb).clamp_min(1e-12)
        log_l1 = (ma.clamp_min(1e-7).log() - mb.clamp_min(1e-7).log()).abs().mean()
        total, used = total + (convergence + log_l1).item(), used + 1
    return total / used if used else None


# --- results ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    max_rel: float = 1e-4  # fp32: max |error| / reference std
    min_cosine: float = 0.999  # bf16
    min_snr_db: float = 35.0  # decoded audio, any dtype


@dataclass
class StageResult:
    stage: str  # token_ids, text_encoder, ..., dit_velocity, final_latents, decoded_audio, reference_mirror
    view: str  # isolated, accumulated, direct, or reference (the harness check)
    passed: bool
    criterion: str
    shape: list | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    snr_db: float | None = None
    stft: float | None = None
    mismatches: int | None = None  # exactly compared entries (ids, masks) that differ
    step: int | None = None  # dit_velocity: sampler step and the time t it ran at
    t: float | None = None
    note: str = ""

    @property
    def label(self) -> str:
        return self.stage if self.step is None else f"{self.stage}[{self.step}] t={self.t:.3f}"


class _Judge:
    """Turns tensor pairs (ours, reference) into StageResults against the thresholds of one dtype."""

    def __init__(self, thresholds: Thresholds, bf16: bool):
        self.th, self.bf16 = thresholds, bf16

    def tensors(self, stage, view, ours, ref, *, mask=None, **where) -> StageResult:
        if ours.shape != ref.shape:
            return StageResult(stage, view, False, "same shape", list(ref.shape),
                               note=f"shape: ours {list(ours.shape)}, reference {list(ref.shape)}", **where)
        m = tensor_metrics(ours, ref)
        if self.bf16:
            criterion, ok = f"cosine >= {self.th.min_cosine:g}", m["cosine"] >= self.th.min_cosine
        else:
            criterion, ok = f"err/std <= {self.th.max_rel:g}", m["max_rel"] <= self.th.max_rel
        result = StageResult(stage, view, bool(ok), criterion, list(ref.shape), **m, **where)
        if mask is not None:
            self._add_mismatches(result, [mask])
        return result

    def exact(self, stage, view, pairs) -> StageResult:
        result = StageResult(stage, view, True, "identical", list(pairs[0][1].shape))
        self._add_mismatches(result, pairs)
        return result

    def audio(self, stage, view, ours, ref) -> StageResult:
        result = self.tensors(stage, view, ours, ref)
        if result.max_abs is None:
            return result
        result.snr_db, result.stft = snr_db(ours, ref), stft_distance(ours, ref)
        result.criterion = f"SNR >= {self.th.min_snr_db:g} dB"
        result.passed = result.snr_db >= self.th.min_snr_db
        return result

    def schedule(self, ours: list[float], ref: list[float]) -> StageResult:
        if len(ours) != len(ref):
            return StageResult("schedule", "direct", False, "same length", [len(ref)],
                               note=f"{len(ours)} DiT calls in ours, {len(ref)} steps in the reference")
        err = max((abs(a - b) for a, b in zip(ours, ref)), default=0.0)
        return StageResult("schedule", "direct", err <= SCHEDULE_ATOL, f"max_abs <= {SCHEDULE_ATOL:g}",
                           [len(ref)], max_abs=err)

    @staticmethod
    def _add_mismatches(result: StageResult, pairs) -> None:
        count = 0
        for ours, ref in pairs:
            if ours.shape != ref.shape:
                result.passed = False
                result.note = f"shape: ours {list(ours.shape)}, reference {list(ref.shape)}"
                return
            # Compared as int64 on the CPU: ids are integers, masks come as bool (diffusers) or int (ours).
            count += int((ours.cpu().long() != ref.cpu().long()).sum())
        result.mismatches = count
        result.passed = result.passed and count == 0


@dataclass
class Report:
    meta: dict
    thresholds: Thresholds
    stages: list[StageResult] = field(default_factory=list)
    # (ours [2, S], reference [2, S], sample rate) of the accumulated view, for the HTML report; not in the JSON
    audio: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)

    def first_own_failure(self) -> StageResult | None:
        """The first stage that differs even when fed our inputs: where the difference starts."""
        return next((s for s in self.stages if not s.passed and s.view in ("isolated", "direct")), None)

    def to_json(self) -> dict:
        return _finite({"schema": SCHEMA, **self.meta, "thresholds": asdict(self.thresholds), "passed": self.passed,
                        "stages": [asdict(s) for s in self.stages]})

    def table(self) -> str:
        m = self.meta
        lines = [f"acestep parity: acestep-core {m['ours_version']} vs {m['against']} {m['reference_version']}",
                 f"task {m['task']}, {m['latent_frames']} latent frames ({m['seconds']:.2f} s), {m['steps']} steps, "
                 f"guidance {m['guidance_scale']:g}, seed {m['seed']}, {m['dtype']} on {m['device']}",
                 NOTES.get(m.get("compat"), ""), "",
                 f"{'stage':<24} {'view':<11} {'shape':<12} {'max_abs':>9} {'err/std':>9} {'cosine':>10} "
                 f"{'SNR dB':>7} {'MR-STFT':>8}  result"]
        for s in self.stages:
            shape = "x".join(str(d) for d in s.shape) if s.shape else "-"
            result = "ok" if s.passed else f"FAIL ({s.criterion}{'; ' + s.note if s.note else ''})"
            if s.mismatches:
                result += f" {s.mismatches} entries differ"
            lines.append(f"{s.label:<24} {s.view:<11} {shape:<12} {_fmt(s.max_abs, '9.2e')} {_fmt(s.max_rel, '9.2e')} "
                         f"{_fmt(s.cosine, '10.7f')} {_fmt(s.snr_db, '7.1f')} {_fmt(s.stft, '8.5f')}  {result}")
        return "\n".join(lines + [""] + self.summary())

    def summary(self) -> list[str]:
        """The verdict: PASS / FAIL with counts, then where to look."""
        failed = [s for s in self.stages if not s.passed]
        if not failed:
            return [f"PASS: all {len(self.stages)} comparisons within thresholds"]
        lines = [f"FAIL: {len(failed)} of {len(self.stages)} comparisons past thresholds"]
        first = self.first_own_failure()
        if any(s.view == "reference" for s in failed):
            lines.append("reference_mirror failed: this tool's replay of diffusers' __call__ no longer gives what "
                         "pipe(...) gives (another diffusers version?); the isolated rows cannot be trusted")
        if first is not None:
            lines.append(f"first stage that differs on its own: {first.label} ({first.view}); "
                         "the stages before it match")
        else:
            lines.append("every stage matches when fed our inputs: the accumulated rows add up small per-stage errors")
        return lines


def _fmt(x, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if x is None else format(x, spec)


def _finite(x):
    """JSON has no infinity or NaN: such floats are written as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
