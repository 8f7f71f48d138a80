"""The HTML report's figures (matplotlib, rendered off-screen to PNG and embedded as data URIs).

matplotlib is part of the `parity` extra; acestep_core never imports it.
"""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")  # off-screen: the report is written to a file, never shown

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

FLOOR = 1e-12  # where an exact match (error 0) is drawn on the log scale
VIEW_STYLE = {"isolated": ("o", "tab:blue"), "accumulated": ("x", "tab:red"), "direct": ("s", "tab:green"),
              "reference": ("d", "tab:gray")}


def png(fig) -> str:
    """A figure -> a `data:image/png;base64,...` URI (and the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _error(row: dict) -> float | None:
    value = row.get("max_rel")
    if value is None or not math.isfinite(value):
        return None
    return max(value, FLOOR)


def stage_errors(series: dict[str, list[dict]], threshold: float | None) -> str:
    """err/std of every row (log scale), one marker style per view; `series`: name -> JSON stage rows (several
    names: one report each, for --compare). Rows are placed by (label, view) in the order first seen."""
    labels: list[str] = []
    for rows in series.values():
        for r in rows:
            if _label(r) not in labels:
                labels.append(_label(r))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.28 * len(labels)), 4.2))
    shades = ["", "tab:purple", "tab:orange", "tab:olive"]
    for k, (name, rows) in enumerate(series.items()):
        for view, (marker, color) in VIEW_STYLE.items():
            pts = [(labels.index(_label(r)), _error(r)) for r in rows if r["view"] == view and _error(r) is not None]
            if pts:
                xs, ys = zip(*pts)
                tag = view if len(series) == 1 else f"{name} {view}"
                ax.scatter(xs, ys, marker=marker, color=shades[k % len(shades)] or color, label=tag, s=28)
    if threshold is not None:
        ax.axhline(threshold, color="black", lw=0.8, ls="--", label=f"fp32 threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("max |error| / reference std")
    ax.set_title(f"relative error per stage (exact matches drawn at {FLOOR:g})")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return png(fig)


def step_errors(rows: list[dict], threshold: float | None) -> str | None:
    """err/std per sampler step for the DiT velocity and the latents after each step, both views."""
    stepped = [r for r in rows if r.get("step") is not None and _error(r) is not None]
    if not stepped:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for stage, line in (("dit_velocity", "-"), ("sampler_step", ":"), ("cover_noise", "--")):
        for view in ("isolated", "accumulated"):
            pts = sorted((r["step"], _error(r)) for r in stepped if r["stage"] == stage and r["view"] == view)
            if pts:
                marker, color = VIEW_STYLE[view]
                ax.plot(*zip(*pts), line, marker=marker, color=color, label=f"{stage} {view}")
    if threshold is not None:
        ax.axhline(threshold, color="black", lw=0.8, ls="--", label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("sampler step")
    ax.set_ylabel("max |error| / reference std")
    ax.set_title("per sampler step: isolated (fed our inputs) and accumulated (its own run)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig)


def _envelope(x: torch.Tensor, buckets: int = 4000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[S] -> (bucket start index, min, max) per bucket: a long waveform drawn as its envelope."""
    k = max(1, x.numel() // buckets)
    n = x.numel() // k * k
    chunks = x[:n].reshape(-1, k)  # [S] -> [S / k, k]
    return torch.arange(chunks.shape[0]) * k, chunks.min(dim=1).values, chunks.max(dim=1).values


def mel_filters(n_fft: int, n_mels: int, rate: int) -> torch.Tensor:
    """Triangular filters on the HTK mel scale -> [n_mels, n_fft // 2 + 1]."""
    def mel(f):
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = hz(torch.linspace(0.0, float(mel(torch.tensor(rate / 2.0))), n_mels + 2, dtype=torch.float64))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [n_mels, 1] each
    rise = (freqs - lo) / (mid - lo)
    fall = (hi - freqs) / (hi - mid)
    return rise.minimum(fall).clamp(min=0.0).float()


def log_mel(wave: torch.Tensor, rate: int, n_fft: int = 2048, hop: int = 512, n_mels: int = 80) -> torch.Tensor:
    """Mono waveform [S] -> log-mel power spectrogram in dB [n_mels, frames]."""
    spec = torch.stft(wave.float(), n_fft, hop_length=hop, window=torch.hann_window(n_fft), return_complex=True)
    power = spec.abs() ** 2  # [n_fft / 2 + 1, frames]
    return 10.0 * torch.log10((mel_filters(n_fft, n_mels, rate) @ power).clamp(min=1e-10))


def audio_figures(ours: torch.Tensor, ref: torch.Tensor, rate: int, title: str) -> tuple[str, str]:
    """(waveforms overlaid, log-mel spectrograms of both and their difference) for audio [2, S]."""
    ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
    n = min(ours.shape[-1], ref.shape[-1])
    ours, ref = ours[..., :n], ref[..., :n]
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.6), sharex=True)
    for ch, ax in enumerate(axes):
        for wave, color, name in ((ref[ch], "tab:gray", "reference"), (ours[ch], "tab:blue", "ours")):
            at, lo, hi = _envelope(wave)
            ax.fill_between((at / rate).numpy(), lo.numpy(), hi.numpy(), color=color, alpha=0.5, lw=0, label=name)
        at, lo, hi = _envelope(ours[ch] - ref[ch])
        ax.fill_between((at / rate).numpy(), lo.numpy(), hi.numpy(), color="tab:red", alpha=0.8, lw=0,
                        label="ours - reference")
        ax.set_ylabel(f"channel {ch}")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("seconds")
    axes[0].set_title(f"decoded audio, overlaid ({title})")
    waves = png(fig)

    mono_ours, mono_ref = ours.mean(dim=0), ref.mean(dim=0)  # [2, S] -> [S]
    if n < 2048:
        return waves, ""
    a, b = log_mel(mono_ours, rate), log_mel(mono_ref, rate)
    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    seconds = n / rate
    top = float(max(a.max(), b.max()))
    for ax, spec, name in ((axes[0], a, "ours"), (axes[1], b, "reference")):
        im = ax.imshow(spec.numpy(), origin="lower", aspect="auto", extent=(0, seconds, 0, spec.shape[0]),
                       vmin=top - 80, vmax=top, cmap="magma")
        ax.set_ylabel(f"{name}\nmel bin")
        fig.colorbar(im, ax=ax, label="dB")
    diff = (a - b).numpy()
    lim = max(1e-3, float(abs(diff).max()))
    im = axes[2].imshow(diff, origin="lower", aspect="auto", extent=(0, seconds, 0, diff.shape[0]),
                        vmin=-lim, vmax=lim, cmap="coolwarm")
    axes[2].set_ylabel("ours - reference\nmel bin")
    axes[2].set_xlabel("seconds")
    fig.colorbar(im, ax=axes[2], label="dB")
    axes[0].set_title(f"log-mel spectrograms ({title})")
    return waves, png(fig)


def _label(row: dict) -> str:
    return row["stage"] if row.get("step") is None else f"{row['stage']}[{row['step']}]"
