"""Text side (real size, random weights): Qwen3-Embedding-0.6B caption encoder and the condition encoder.

    python benchmarks/bench_text.py                           # text64 and condition, fp32
    python benchmarks/bench_text.py --cases text64 --dtype bf16

Cases (batch 1):
  text64     ours Qwen3Encoder vs transformers Qwen3Model (sdpa) on 64 token ids (no padding)
  condition  ours ConditionEncoder vs diffusers AceStepConditionEncoder: 64 caption states, 300 lyric
             token embeddings, one 750-frame (30 s) timbre reference -> the 365-token packed condition
ratio = reference_s / ours_s.
"""

from __future__ import annotations

import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CASES = ["text64", "condition"]
DEFAULT = CASES


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], CASES, DEFAULT)
    p.add_argument("--tokens", type=int, default=64, help="caption tokens (text64 and condition)")
    p.add_argument("--lyric-tokens", type=int, default=300)
    args = p.parse_args()
    cases = common.setup(args, CASES)
    dtype, device = common.DTYPES[args.dtype], args.device
    config = common.real_config()
    peak = common.matmul_peak(dtype, device)["peak_gflops"]
    gen = torch.Generator().manual_seed(0)
    tol, metric = common.parity_tolerance(dtype)

    for case in cases:
        rec = {"bench": "text", "case": case, "dtype": args.dtype, "device": device}
        with torch.inference_mode():
            if case == "text64":
                common.log("building transformers Qwen3Model (Qwen3-Embedding-0.6B size) ...")
                ref = common.transformers_qwen3(config).to(device=device, dtype=dtype)
                ours = common.ours_from("text_encoder", config, ref, source="transformers")
                ids = torch.randint(0, config.text_encoder.vocab_size, (1, args.tokens), generator=gen).to(device)
                res = common.compare({"reference": lambda: ref(input_ids=ids).last_hidden_state,
                                      "ours": lambda: ours(ids)}, repeats=args.repeats, warmup=args.warmup,
                                     device=device)
                res_ref, res_ours = res["reference"], res["ours"]
                flops = common.qwen3_flops(config.text_encoder, args.tokens)
                rec["tokens"] = args.tokens
                out_ours, out_ref = res_ours["output"], res_ref["output"]
            else:
                common.log("building diffusers AceStepConditionEncoder ...")
                ref = common.diffusers_condition(config).to(device=device, dtype=dtype)
                ours = common.ours_from("condition", config, ref)
                cc = config.condition
                text = torch.randn(1, args.tokens, cc.text_hidden_dim, generator=gen).to(device=device, dtype=dtype)
                lyric = (0.02 * torch.randn(1, args.lyric_tokens, cc.text_hidden_dim, generator=gen)).to(
                    device=device, dtype=dtype)
                refs = torch.randn(1, cc.timbre_fix_frame, cc.timbre_hidden_dim, generator=gen).to(device=device,
                                                                                                   dtype=dtype)
                tmask = torch.ones(1, args.tokens, dtype=torch.bool, device=device)
                lmask = torch.ones(1, args.lyric_tokens, dtype=torch.bool, device=device)
                order = torch.zeros(1, dtype=torch.long, device=device)
                res = common.compare({
                    "reference": lambda: ref(text_hidden_states=text, text_attention_mask=tmask,
                                             lyric_hidden_states=lyric, lyric_attention_mask=lmask,
                                             refer_audio_acoustic_hidden_states_packed=refs,
                                             refer_audio_order_mask=order)[0],
                    "ours": lambda: ours(text, tmask, lyric, lmask, refs, order)[0],
                }, repeats=args.repeats, warmup=args.warmup, device=device)
                res_ref, res_ours = res["reference"], res["ours"]
                enc = cc.encoder
                flops = (2 * args.tokens * cc.text_hidden_dim * enc.hidden_size
                         + common.stack_flops(enc, args.lyric_tokens, cc.num_lyric_layers, cc.text_hidden_dim)
                         + common.stack_flops(enc, cc.timbre_fix_frame, cc.num_timbre_layers, cc.timbre_hidden_dim))
                rec.update(tokens=args.tokens, lyric_tokens=args.lyric_tokens, timbre_frames=cc.timbre_fix_frame)
                out_ours, out_ref = res_ours["output"], res_ref["output"]
            err = common.check_parity(f"{case} {args.dtype}", out_ours, out_ref, tol, metric=metric)
        rec.update(ours_s=res_ours["median_s"], reference_s=res_ref["median_s"],
                   reference=type(ref).__module__.split(".")[0] + "." + type(ref).__name__)
        rec["diffusers_s"] = rec["reference_s"]  # same column name as the other scripts
        rec["ratio"] = rec["reference_s"] / rec["ours_s"]
        rec.update(common.extra_ratios(res_ours, res_ref))
        rec["gflop"] = flops / 1e9
        rec["ours_gflops"] = flops / rec["ours_s"] / 1e9
        rec["matmul_peak_gflops"] = peak
        rec["ours_pct_peak"] = 100 * rec["ours_gflops"] / peak
        rec["reference_pct_peak"] = 100 * flops / rec["reference_s"] / 1e9 / peak
        rec["ours_weight_gib"] = common.param_gib(ours)
        rec.update(common.result_fields("ours", res_ours))
        rec.update(common.result_fields("reference", res_ref))
        rec["parity_rel_err"] = err
        rec["loadavg_1m"] = res_ours["loadavg_1m"]
        rec["repeats"], rec["warmup"] = res_ours["repeats"], res_ours["warmup"]
        common.emit(rec)
        del ref, ours, res, res_ours, res_ref
        gc.collect()


if __name__ == "__main__":
    main()
