"""5 Hz LM planner (real sizes, random weights): prefill and CFG decode vs transformers, and a 30 s song plan.

    python benchmarks/bench_lm.py --preset 0.6B                  # fp32 and bf16, all cases
    python benchmarks/bench_lm.py --preset 1.7B --dtypes bf16 --cases decode
    python benchmarks/bench_lm.py --quick                        # tiny config, smoke run (seconds)

Presets (transformers Qwen3ForCausalLM, tied head; the released LMs are Qwen3-0.6B / Qwen3-1.7B bodies with
64000 audio-code tokens added; vocab 217204 is the reported embedding size of the 1.7B LM, used for both):
  0.6B  hidden 1024, intermediate 3072, 28 layers, 16 heads / 8 kv heads, head_dim 128
  1.7B  hidden 2048, intermediate 6144, 28 layers, 16 heads / 8 kv heads, head_dim 128
  tiny  the official tiny fixture's shape (hidden 16, 3 layers, vocab 64554)
Cases, CFG batch 2 (the [cond, uncond] pair, the uncond row left-padded), as the official codes phase runs:
  prefill  the pair's prompt forward (last-token logits): ours vs transformers forward(logits_to_keep=1)
  decode   --new-tokens tokens after the prefill, per token: ours `generate_cfg` (official sampling order, no
           FSM; "ours_codes" also scores only the code rows of the head, as the codes phase does with the
           FSM) vs transformers `generate` (do_sample, min_new_tokens = max_new_tokens, no CFG mixing).
           Per token = time between the first and the last step stamp / steps (a stamp is taken right after
           each step's forward on both sides), so the prefill is not in it.
  song30   `Planner.plan` end to end, duration 30 s given (phase 1 writes bpm / keyscale / time signature
           under the FSM, caption and language off so it stays short; phase 2: 150 codes + EOS with CFG).
           ours only (the official handler is not installed here). The real tokenizer is not available
           offline: the tiny fixture tokenizer (64554 tokens) is used inside the real-size embedding.
Every result is one JSON line (benchmarks/common.py); ratio = transformers_s / ours_s (> 1: ours faster).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from acestep_core.lm.config import LMConfig  # noqa: E402
from acestep_core.lm.decode import generate_cfg  # noqa: E402
from acestep_core.lm.model import Qwen3LM  # noqa: E402
from acestep_core.lm.planner import Planner  # noqa: E402
from acestep_core.lm.sample import Sampling  # noqa: E402
from acestep_core.lm.tokenizer import LMTokenizer  # noqa: E402

PRESETS = {
    "0.6B": LMConfig(vocab_size=217204, hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                     num_kv_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6),
    "1.7B": LMConfig(vocab_size=217204, hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
                     num_kv_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6),
    "tiny": LMConfig(vocab_size=64554, hidden_size=16, intermediate_size=48, num_layers=3, num_heads=4,
                     num_kv_heads=2, head_dim=32, rope_theta=1e6, rms_norm_eps=1e-6),
}
CASES = ["prefill", "decode", "song30"]
TOKENIZER = common.FIXTURES / "official_tiny_lm" / "checkpoints" / "acestep-5Hz-lm-tiny" / "tokenizer.json"
SAMPLING = Sampling(temperature=0.85, top_k=None, top_p=0.9, repetition_penalty=1.0)


class StepClock:
    """Stands in for the FSM in the decode case and stamps the time at every step (called right after each
    forward, before sampling; transformers calls its logits processors at the same point). Blocks EOS / pad
    so both sides generate the same count. With code_rows it also declares the codes phase, so generate_cfg
    scores only the code rows of the head."""

    state = "CODES_GENERATION"

    def __init__(self, tok: LMTokenizer, vocab: int, code_rows: bool = False):
        self.stops, self.stamps = [tok.eos_id, tok.pad_id], []
        if code_rows:
            self.code_ids_and_eos = torch.zeros(vocab, dtype=torch.bool)
            self.code_ids_and_eos[tok.code_offset:tok.code_offset + 64000] = True
            self.code_ids_and_eos[tok.eos_id] = True

    def __call__(self, ids, scores):
        self.stamps.append(time.perf_counter())
        scores[:, self.stops] = float("-inf")
        return scores

    def update_state(self, token: int) -> None:
        pass

    def per_token_s(self) -> float:
        """Seconds per decode step: (last stamp - first stamp) / steps between them (prefill excluded)."""
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)


def build(cfg: LMConfig, dtype: torch.dtype, device: str):
    """transformers Qwen3ForCausalLM with small random weights, and ours sharing its tensors (no 2nd copy)."""
    import transformers

    hf_cfg = transformers.Qwen3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=True,
        max_position_embeddings=40960)
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(hf_cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # parameters only: the rotary inv_freq buffer must keep its value
        for name, p in hf.named_parameters():
            p.copy_(torch.ones_like(p) if p.dim() == 1 else 0.02 * torch.randn(p.shape, generator=gen))
    hf = hf.to(device=device, dtype=dtype).eval().requires_grad_(False)
    with torch.device("meta"):
        ours = Qwen3LM(cfg)
    sd = {k.removeprefix("model."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    ours.load_state_dict(sd, strict=True, assign=True)
    return hf, ours.eval()


def prompt_pair(tok: LMTokenizer, cond_len: int, vocab: int) -> tuple[list[int], list[int]]:
    gen = torch.Generator().manual_seed(1)
    text = min(tok.code_offset, vocab)  # ordinary text ids
    cond = torch.randint(0, text, (cond_len,), generator=gen).tolist()
    return cond, cond[: max(8, cond_len // 3)]  # the uncond prompt is shorter: left-padded, as official


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], CASES, CASES)
    p.add_argument("--preset", choices=sorted(PRESETS), default="0.6B")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32,bf16")
    p.add_argument("--prompt-tokens", type=int, default=200, help="cond prompt length (uncond: a third)")
    p.add_argument("--new-tokens", type=int, default=24, help="decode case: generated tokens")
    p.add_argument("--quick", action="store_true", help="tiny config, short prompt, one timed run")
    p.add_argument("--layers", type=int, default=None, help="override the layer count (tuning runs; not the preset)")
    args = p.parse_args()
    if args.quick:
        args.preset, args.prompt_tokens, args.new_tokens = "tiny", 64, 8
        args.repeats = args.repeats or 1
    cases = common.setup(args, CASES)
    cfg, device = PRESETS[args.preset], args.device
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    tok = LMTokenizer.from_file(TOKENIZER)
    for dname in [d for d in args.dtypes.split(",") if d]:
        dtype = common.DTYPES[dname]
        common.log(f"building {args.preset} ({dname}) ...")
        hf, ours = build(cfg, dtype, device)
        cond, uncond = prompt_pair(tok, args.prompt_tokens, cfg.vocab_size)
        ids, mask = tok.pad_left([cond, uncond])
        ids, mask = ids.to(device), mask.to(device)
        base = {"bench": "lm", "preset": args.preset, "layers": cfg.num_layers, "dtype": dname, "device": device,
                "prompt_tokens": args.prompt_tokens, "param_gib": common.param_gib(ours)}
        cache = ours.new_cache(2, ids.shape[1] + args.new_tokens)
        with torch.inference_mode():
            def ours_prefill():
                cache.reset()
                return ours(ids, cache, mask)

            def hf_prefill():
                return hf(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1).logits[:, -1].float()

            pre = common.compare({"ours": ours_prefill, "transformers": hf_prefill}, repeats=args.repeats,
                                 warmup=args.warmup, device=device)
            tol, metric = common.parity_tolerance(dtype)
            err = common.check_parity("prefill logits", pre["ours"]["output"], pre["transformers"]["output"], tol,
                                      metric=metric)
            if "prefill" in cases:
                tokens = int(mask.sum())
                common.emit({**base, "case": "prefill", "real_tokens": tokens, "parity_rel_err": err,
                             "ours_tok_s": tokens / pre["ours"]["median_s"],
                             "transformers_tok_s": tokens / pre["transformers"]["median_s"],
                             "ratio": pre["transformers"]["median_s"] / pre["ours"]["median_s"],
                             **common.extra_ratios(pre["ours"], pre["transformers"]),
                             **common.result_fields("ours", pre["ours"]),
                             **common.result_fields("transformers", pre["transformers"])})
            if "decode" in cases:
                import transformers

                n, per = args.new_tokens, {"ours": [], "ours_codes": [], "transformers": []}

                def ours_gen(name: str):
                    def run():
                        clock = StepClock(tok, cfg.vocab_size, code_rows=name == "ours_codes")
                        out = generate_cfg(ours, tok, cond, uncond, cfg_scale=2.0, sampling=SAMPLING, fsm=clock,
                                           max_new_tokens=n, generator=torch.Generator(device=device).manual_seed(0),
                                           cache=cache, codes_phase=name == "ours_codes")[0]
                        per[name].append(clock.per_token_s())
                        return out
                    return run

                def hf_gen():
                    clock = StepClock(tok, cfg.vocab_size)
                    out = hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=True,
                                      temperature=0.85, top_p=0.9, top_k=None, pad_token_id=tok.pad_id,
                                      logits_processor=transformers.LogitsProcessorList([
                                          lambda i, scores: clock(i, scores)]))
                    per["transformers"].append(clock.per_token_s())
                    return out

                dec = common.compare({"ours": ours_gen("ours"), "ours_codes": ours_gen("ours_codes"),
                                      "transformers": hf_gen}, repeats=args.repeats, warmup=args.warmup, device=device)
                timed = {k: v[args.warmup:] for k, v in per.items()}  # the timed runs (warm-up ones dropped)
                med = {k: statistics.median(v) for k, v in timed.items()}
                best = {k: min(v) for k, v in timed.items()}
                common.emit({**base, "case": "decode", "new_tokens": n,
                             "ours_ms_per_token": 1e3 * med["ours"], "ours_codes_ms_per_token": 1e3 * med["ours_codes"],
                             "transformers_ms_per_token": 1e3 * med["transformers"],
                             "ours_tok_s": 1 / med["ours"], "ours_codes_tok_s": 1 / med["ours_codes"],
                             "transformers_tok_s": 1 / med["transformers"],
                             "ratio": med["transformers"] / med["ours"],
                             "ratio_codes": med["transformers"] / med["ours_codes"],
                             "ratio_min": best["transformers"] / best["ours"],
                             "ms_per_token_runs": {k: [round(1e3 * t, 1) for t in v] for k, v in timed.items()},
                             **common.result_fields("ours", dec["ours"]),
                             **common.result_fields("ours_codes", dec["ours_codes"]),
                             **common.result_fields("transformers", dec["transformers"])})
            if "song30" in cases:
                planner = Planner(ours, tok, progress=False)

                def song():
                    return planner.plan("an upbeat synth pop song with female vocals",
                                        "[verse]\nneon lights are calling\n[chorus]\nwe run all night", duration=30,
                                        use_cot_caption=False, use_cot_language=False, seed=0)

                res = common.measure(song, repeats=args.repeats, warmup=args.warmup, device=device)
                plan = res["output"]
                common.emit({**base, "case": "song30", "codes": len(plan.codes), "metadata": plan.metadata,
                             **{f"last_{k}": v for k, v in plan.timings.items()},
                             **common.result_fields("ours", res)})
        del hf, ours, cache


if __name__ == "__main__":
    main()
