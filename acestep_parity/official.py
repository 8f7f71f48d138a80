"""`acestep parity --against official`: ours against the official ACE-Step 1.5 code, in the official environment.

    acestep parity --against official --official-src ACE-Step-1.5/ --official-python ace/bin/python \\
        --checkpoint ACE-Step-1.5/checkpoints --task repaint --steps 8

The official code pins transformers < 4.58 while our `parity` extra pins transformers 5, so the official
side runs in its own interpreter: `official_worker.py` is started there with `--official-python` (and
`--official-pythonpath` prepended to PYTHONPATH, for a `pip install --target` folder), and the two sides
exchange tensors through safetensors files in a temporary folder, never pickle. Ours runs first (one
ordinary pipe(...) call, recorded); its tensors go to the worker, which runs the official handler on its
own (accumulated view), with our tensors at every stage boundary (isolated view), and its sampler on our
condition (final latents, isolated). The rows are built here (`official_rows.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from acestep_core import tasks
from acestep_core.behaviour import OFFICIAL
from acestep_core.checkpoint import detect_layout
from acestep_core.hub import resolve_checkpoint
from acestep_core.safetensors_io import CheckpointError

from .case import ParityCase, pipeline_request
from .ours import run_ours
from .official_rows import REPAINT_STRENGTH, official_rows
from .report import Report, Thresholds, _Judge, environment

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_worker.py")
EXIT_IMPORT, EXIT_VARIANT = 3, 4  # official_worker.py's statuses for "cannot import" and "unknown variant"
SETUP = "docs/parity-report.md, 'Against the official implementation'"


class OfficialSetupError(ValueError):
    """The official environment or checkpoint cannot be used: one line saying what to fix."""


@dataclass(frozen=True)
class OfficialEnv:
    src: str  # the folder holding the official `acestep/` package (a clone of ace-step/ACE-Step-1.5)
    python: str = sys.executable  # an interpreter that can import it
    pythonpath: tuple[str, ...] = ()  # prepended to PYTHONPATH (a `pip install --target` folder)

    def check_src(self) -> None:
        package = os.path.join(self.src, "acestep")
        for sub in ("models", os.path.join("core", "generation", "handler")):
            if not os.path.isdir(os.path.join(package, sub)):
                raise OfficialSetupError(f"--official-src {self.src}: no official `acestep` package there (expected "
                                         f"{os.path.join(package, sub)}); point it at a clone of "
                                         "ace-step/ACE-Step-1.5")

    def environ(self) -> dict:
        env = dict(os.environ)
        paths = [*self.pythonpath, os.path.abspath(self.src)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["TOKENIZERS_PARALLELISM"] = "false"
        return env

    def worker(self, *args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([self.python, WORKER, *args], env=self.environ(), capture_output=True, text=True)
        except OSError as e:
            raise OfficialSetupError(f"--official-python {self.python}: {e.strerror or e}") from None

    def probe(self) -> dict:
        """-> versions and known variants of the official environment; OfficialSetupError when it cannot import."""
        self.check_src()
        done = self.worker("--probe")
        answer = _last_json(done.stdout)
        if done.returncode != 0 or "variants" not in answer:
            why = answer.get("error") or _last_line(done.stderr) or f"exit status {done.returncode}"
            raise OfficialSetupError(f"--official-python {self.python} cannot import the official code at {self.src} "
                                     f"({why}); set up its environment as {SETUP} shows")
        answer["commit"] = _git_commit(self.src)
        return answer


def _git_commit(folder: str) -> str | None:
    """The commit of a git checkout (the official code has no version number of its own), else None."""
    try:
        done = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return f"commit {done.stdout.strip()}" if done.returncode == 0 else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _last_json(text: str) -> dict:
    # The official modules print a few lines of their own at import; the answer is the last one.
    try:
        answer = json.loads(_last_line(text) or "{}")
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def official_checkpoint(checkpoint: str, variant: str | None, variants: list[str]) -> tuple[str, str]:
    """-> (the official model folder, its model_version), after checking the official code knows that variant."""
    path = resolve_checkpoint(checkpoint, variant)
    layout, root = detect_layout(path, variant)
    if layout != "official":
        raise OfficialSetupError(f"--checkpoint {checkpoint}: a {layout} folder; --against official needs the "
                                 "official layout (checkpoints/ with acestep-v15-*/, vae/, Qwen3-Embedding-0.6B/)")
    parent = os.path.dirname(root)
    for sub in ("vae", "Qwen3-Embedding-0.6B"):
        if not os.path.isdir(os.path.join(parent, sub)):
            raise OfficialSetupError(f"--checkpoint {checkpoint}: {os.path.join(parent, sub)} is missing; the official "
                                     f"handler loads it from beside {os.path.basename(root)}/")
    try:
        with open(os.path.join(root, "config.json"), encoding="utf-8") as f:
            version = json.load(f).get("model_version", "turbo")  # the official config class's default
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{root}/config.json: {e}") from None
    if version not in variants:
        raise OfficialSetupError(f"--checkpoint {checkpoint}: the official code does not know the variant "
                                 f"{version!r} (it knows {', '.join(variants)}); pick another --variant or update "
                                 "--official-src")
    return root, version


def _latent_length(case: ParityCase, request: dict, pipe) -> int:
    """Our latent length for the request (what the official handler must agree with; the worker checks)."""
    if case.src_latents is not None:
        return max(case.src_latents.shape[0], OFFICIAL.min_frames)
    if "src_audio" in request:
        return max(request["src_audio"].shape[-1] // pipe.hop, OFFICIAL.min_frames)
    if "audio_codes" in request:
        n = request["audio_codes"].count("<|audio_code_") * pipe.config.audio_tokenizer.pool_window_size
        return max(n, OFFICIAL.min_frames)
    return tasks.latent_length(request["audio_duration"], pipe.sample_rate, pipe.hop)


def _job_tensors(ours, noise: torch.Tensor, request: dict, case: ParityCase) -> dict:
    t = {"noise": noise, "ours.latents": ours.latents, "ours.text": ours.text, "ours.lyric": ours.lyric,
         "ours.states": ours.states, "ours.mask": ours.mask, "ours.context": ours.context}
    t.update(zip(("ours.text_ids", "ours.text_mask", "ours.lyric_ids", "ours.lyric_mask"), ours.ids))
    if ours.source is not None:
        t["ours.source"] = ours.source
    if "src_audio" in request:
        t["src_audio"] = request["src_audio"]
    if case.src_latents is not None:
        t["src_latents"] = case.src_latents[None]  # [T, 64] -> [1, T, 64]
    for i, (x, step_t, states, context, v) in enumerate(ours.dit_calls):
        t.update({f"ours.dit.{i}.x": x, f"ours.dit.{i}.t": step_t, f"ours.dit.{i}.states": states,
                  f"ours.dit.{i}.context": context, f"ours.dit.{i}.v": v})
    # Own CPU copies: safetensors stores no tensors that share memory (the condition is reused by every step).
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in t.items()}


def run_worker(env: OfficialEnv, job: dict, tensors: dict, tmp: str) -> tuple[dict, dict]:
    """Runs one job in the official environment -> (its tensors, its summary)."""
    job = dict(job, inputs=os.path.join(tmp, "inputs.safetensors"), outputs=os.path.join(tmp, "outputs.safetensors"),
               summary=os.path.join(tmp, "summary.json"))
    save_file(tensors, job["inputs"])
    with open(os.path.join(tmp, "job.json"), "w", encoding="utf-8") as f:
        json.dump(job, f)
    print("running the official code ...", file=sys.stderr)
    done = env.worker(os.path.join(tmp, "job.json"))
    if done.returncode == EXIT_VARIANT:
        raise OfficialSetupError(f"the official code does not know the variant {job['model_version']!r}")
    if done.returncode != 0:
        print("\n".join(done.stderr.strip().splitlines()[-20:]), file=sys.stderr)
        raise RuntimeError(f"the official worker failed: {_last_line(done.stderr) or done.returncode}")
    with open(job["summary"], encoding="utf-8") as f:
        return load_file(job["outputs"]), json.load(f)


def compare_official(pipe, env: OfficialEnv, case: ParityCase, model_dir: str, model_version: str, *,
                     thresholds: Thresholds | None = None, probe: dict | None = None) -> Report:
    """Run `case` through our pipeline and the official code (same checkpoint folder) -> Report."""
    case.check()
    thresholds = thresholds or Thresholds()
    probe = probe or env.probe()
    if case.dcw and probe.get("dcw_missing"):
        raise OfficialSetupError(f"--dcw: the official environment cannot import pytorch_wavelets "
                                 f"({probe['dcw_missing']}), without which its DCW silently does nothing; "
                                 f"install pytorch-wavelets and PyWavelets there ({SETUP})")
    request = pipeline_request(case, pipe)
    request.update(cover_noise_strength=case.cover_noise_strength, dcw_enabled=case.dcw,
                   repaint_strength=REPAINT_STRENGTH)
    length = _latent_length(case, request, pipe)
    # Drawn in float32 on the CPU, then moved: the same numbers on every device and in every dtype.
    noise = torch.randn(1, length, pipe.config.dit.latent_dim, generator=torch.Generator().manual_seed(case.seed))
    noise = noise.to(device=pipe.device, dtype=pipe.dtype)
    dtype = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}[pipe.dtype]
    with torch.no_grad():
        ours = run_ours(pipe, request, noise, src_latents=case.src_latents, compat="official")
        vae_alone = None
        if case.src_latents is not None:
            # The DiT got the given latents; the VAE is still compared, on its own. [B, T, C] -> [B, C, T]
            vae_alone = pipe.encode_audio(request["src_audio"][None]).transpose(1, 2)
    job = {"model_dir": model_dir, "vae_dir": os.path.join(os.path.dirname(model_dir), "vae"),
           "text_encoder_dir": os.path.join(os.path.dirname(model_dir), "Qwen3-Embedding-0.6B"),
           "model_version": model_version, "device": str(pipe.device), "dtype": dtype,
           "request": {"caption": case.prompt, "lyrics": case.lyrics, "vocal_language": "en", "task": case.task,
                       "audio_duration": request["audio_duration"], "bpm": None, "keyscale": None,
                       "timesignature": None, "steps": request["num_inference_steps"], "shift": case.shift,
                       "guidance_scale": request["guidance_scale"], "seed": case.seed,
                       "repainting_start": request.get("repainting_start"),
                       "repainting_end": request.get("repainting_end"), "audio_codes": case.audio_codes,
                       "cover_noise_strength": case.cover_noise_strength, "repaint_strength": REPAINT_STRENGTH,
                       "dcw": case.dcw}}
    with tempfile.TemporaryDirectory(prefix="acestep-parity-official-") as tmp:
        theirs, summary = run_worker(env, job, _job_tensors(ours, noise, request, case), tmp)
    judge = _Judge(thresholds, bf16=pipe.dtype == torch.bfloat16)
    rows = official_rows(ours, theirs, judge, case, vae_alone=vae_alone)
    meta = dict(against="official", reference_version=probe.get("commit") or "ACE-Step 1.5", compat="official",
                task=request["task_type"], steps=request["num_inference_steps"],
                guidance_scale=request["guidance_scale"], shift=case.shift, seed=case.seed, latent_frames=length,
                seconds=length * pipe.hop / pipe.sample_rate, dtype={"bfloat16": "bf16", "float32": "fp32"}.get(
                    dtype, dtype), device=str(pipe.device),
                source=("latents" if case.src_latents is not None else "audio") if "src_audio" in request else
                ("codes" if "audio_codes" in request else None),
                official_src=os.path.abspath(env.src), official_python=env.python,
                official_captions=summary["captions"])
    env_meta = environment()
    meta.update(env_meta, versions={**env_meta["versions"], **{f"official {k}": probe[k] for k in
                                                                ("python", "torch", "transformers", "diffusers")}})
    audio = theirs.get("accumulated.audio")
    return Report(meta, thresholds, rows, audio=None if audio is None else (ours.audio[0], audio[0], pipe.sample_rate))
