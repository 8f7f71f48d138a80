"""The 8-step turbo song end to end (real size, random weights): acestep-core vs diffusers' AceStepPipeline.

    python benchmarks/bench_e2e.py                       # e2e10 fp32
    python benchmarks/bench_e2e.py --cases e2e10,e2e60 --repeats 1
    python benchmarks/bench_e2e.py --compat official     # our default behaviour instead of diffusers-compatible

Both pipelines are assembled from the same random modules (ours share the diffusers / transformers tensors;
the VAE is weight-norm folded, a second small copy): text encoding, condition encoder, 8 DiT steps, VAE decode,
peak normalisation. text2music, batch 1, guidance 1 (turbo), shift 3, the same initial noise for both.

Tokenizer: the real Qwen3 tokenizer is not available offline, so both use the tiny fixture tokenizer
(tests/fixtures/official_tiny_turbo/.../tokenizer.json, 612 tokens) inside the real 151669-token vocabulary
(the unused rows of the embedding are simply never looked up). It splits English into more tokens than the
real one; the lyric text is sized so that the formatted lyrics are about 300 tokens, and the caption prompt
(instruction + caption + metadata block) is whatever the short caption below formats to (both counts are in
the JSON line).

compat: "diffusers" (default here) makes ours follow diffusers' conventions so the two outputs can be compared
(same amount of work either way; "official" is our default for users and differs in small conventions
such as padding side and the timestep schedule's float handling). ratio = diffusers_s / ours_s.
Stage times: ours from PipelineOutput.timings; diffusers by wrapping its text encoder, condition encoder,
transformer and vae.decode calls with timers.
"""

from __future__ import annotations

import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECONDS = {"e2e10": 10, "e2e60": 60, "e2e240": 240}
CASES = list(SECONDS)
DEFAULT = ["e2e10"]
CAPTION = "upbeat synth pop with bright analog pads, punchy drums and a catchy female vocal"
LYRIC_LINES = ["[verse]", "walking down the neon street tonight", "every window glowing like a star",
               "hold my hand and never let it go", "[chorus]", "we are dancing in the city lights",
               "singing loud until the morning comes", "oh oh oh we never sleep"]


def lyrics_with_tokens(tokenizer, target: int) -> tuple[str, int]:
    """Repeat the lyric lines until the formatted lyrics reach about `target` tokens."""
    from acestep_core import prompts

    lines, text, n = [], "", 0
    i = 0
    while n < target:
        lines.append(LYRIC_LINES[i % len(LYRIC_LINES)])
        i += 1
        text = "\n".join(lines)
        n = len(tokenizer.encode(prompts.format_lyrics(text, "en"), tokenizer.lyric_max_tokens))
    return text, n


class StageTimer:
    """Wraps callables so that the time spent inside them is added up per stage name."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    def wrap(self, obj, attr: str, stage: str) -> None:
        fn = getattr(obj, attr)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.totals[stage] = self.totals.get(stage, 0.0) + time.perf_counter() - t0

        setattr(obj, attr, timed)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], CASES, DEFAULT)
    p.add_argument("--compat", choices=("diffusers", "official"), default="diffusers")
    p.add_argument("--lyric-tokens", type=int, default=300)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    cases = common.setup(args, CASES)
    dtype, device = common.DTYPES[args.dtype], args.device

    from diffusers import AceStepPipeline as DiffusersPipeline
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import PreTrainedTokenizerFast

    from acestep_core.pipeline import AceStepPipeline
    from acestep_core.text import TextTokenizer

    config = common.real_config()
    common.log("building the reference modules (random weights) ...")
    ref = {
        "text_encoder": common.transformers_qwen3(config),
        "condition": common.diffusers_condition(config),
        "dit": common.diffusers_dit(config),
        "vae": common.diffusers_vae(config),
    }
    ref = {k: m.to(device=device, dtype=dtype) for k, m in ref.items()}
    ours = {k: common.ours_from(k, config, m, "transformers" if k == "text_encoder" else "diffusers")
            for k, m in ref.items()}
    # text2music never touches the FSQ tokenizer / detokenizer: not built.
    ours.update(audio_tokenizer=None, audio_detokenizer=None)
    gc.collect()
    weights = {k: round(common.param_gib(m), 3) for k, m in ours.items() if m is not None}
    common.log(f"our weights (GiB): {weights}; RSS {common.rss_gib():.2f} GiB")

    pc = config.pipeline
    tok = TextTokenizer(common.TINY_TOKENIZER, pad_token_id=pc.pad_token_id, caption_max_tokens=pc.text_max_tokens,
                        lyric_max_tokens=pc.lyric_max_tokens)
    silence = ref["condition"].silence_latent  # [1, 15000, 64], the same tensor both pipelines read
    pipe = AceStepPipeline(config, ours, silence, tok)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(common.TINY_TOKENIZER), pad_token="<|endoftext|>",
                                     padding_side="right")
    dpipe = DiffusersPipeline(vae=ref["vae"], text_encoder=ref["text_encoder"], tokenizer=hf_tok,
                              transformer=ref["dit"], condition_encoder=ref["condition"],
                              scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0))
    dpipe.set_progress_bar_config(disable=True)
    timer = StageTimer()
    timer.wrap(ref["text_encoder"], "forward", "text_encoder")
    timer.wrap(ref["condition"], "forward", "condition")
    timer.wrap(ref["dit"], "forward", "dit")
    timer.wrap(ref["vae"], "decode", "vae_decode")

    lyrics, lyric_tokens = lyrics_with_tokens(tok, args.lyric_tokens)
    from acestep_core import prompts

    for case in cases:
        seconds = SECONDS[case]
        frames = seconds * config.vae.sampling_rate // config.vae.hop_length
        noise = torch.randn(1, frames, config.dit.latent_dim, generator=torch.Generator().manual_seed(0))
        noise = noise.to(device=device, dtype=dtype)
        common_kw = dict(prompt=CAPTION, lyrics=lyrics, audio_duration=seconds, num_inference_steps=args.steps,
                         guidance_scale=1.0, shift=3.0, latents=noise, output_type="pt")
        caption_tokens = len(tok.encode(prompts.format_caption(
            CAPTION, prompts.task_instruction("text2music"), duration=seconds), pc.text_max_tokens))

        ours_stages: list[dict] = []

        def run_ours():
            out = pipe(**common_kw, compat=args.compat)
            ours_stages.append(out.timings)
            return out.audios

        def run_ref():
            timer.totals = {}
            return dpipe(**common_kw).audios

        with torch.inference_mode():
            common.log(f"{case}: diffusers and ours, interleaved ...")
            res = common.compare({"diffusers": run_ref, "ours": run_ours}, repeats=args.repeats,
                                 warmup=args.warmup, device=device)
            r_ref, r_ours = res["diffusers"], res["ours"]
            ref_stages = dict(timer.totals)  # diffusers' last run
        err = common.rel_err(r_ours["output"], r_ref["output"])
        common.log(f"[parity] e2e {case}: max|ours - diffusers| / std = {err:.3g} (compat={args.compat})")
        rec = {"bench": "e2e", "case": case, "dtype": args.dtype, "device": device, "seconds": seconds,
               "frames": frames, "steps": args.steps, "compat": args.compat, "caption_tokens": caption_tokens,
               "lyric_tokens": lyric_tokens, "ours_s": r_ours["median_s"], "diffusers_s": r_ref["median_s"],
               "ratio": r_ref["median_s"] / r_ours["median_s"], **common.extra_ratios(r_ours, r_ref),
               "ours_stages_s": {k: round(v, 3) for k, v in ours_stages[-1].items()},
               "diffusers_stages_s": {k: round(v, 3) for k, v in ref_stages.items()},
               "audio_rel_err": err, "ours_weight_gib": sum(weights.values())}
        rec.update(common.result_fields("ours", r_ours))
        rec.update(common.result_fields("diffusers", r_ref))
        rec["loadavg_1m"] = r_ours["loadavg_1m"]
        rec["repeats"], rec["warmup"] = r_ours["repeats"], r_ours["warmup"]
        common.emit(rec)
        del res, r_ours, r_ref
        gc.collect()


if __name__ == "__main__":
    main()
