"""Adapters on the real-size DiT (ACE-Step 1.5 turbo, random weights): sampler-step cost and a training step.

    python benchmarks/bench_adapters.py                  # fp32 CPU, 10 s of audio, rank 64
    python benchmarks/bench_adapters.py --device cuda --dtype bf16

Cases (batch 1, 250 latent frames = 10 s, a 365-token condition whose K/V are prepared once, as a sampler does):
  step_base / step_lora64 / step_lora64_fused / step_lokr64   one DiT sampler step without adapter, with a rank-64
      LoRA on all 192 attention projections applied unmerged, the same LoRA fused, and a LoKr (LyCORIS layout at
      linear_dim 64: full w1 [32, 32] and w2 [64, 64] factors for the 2048-wide projections)
  train_ckpt / train_nockpt   one training micro-step (flow-matching loss, backward into the rank-64 LoRA) with and
      without gradient checkpointing per DiT layer; peak RSS (CPU) or peak allocated memory (GPU)
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

from acestep_core import adapters, lokr, train_lora  # noqa: E402
from acestep_core.dit import DiT  # noqa: E402

CASES = ["step", "train"]
FRAMES, COND_TOKENS, RANK = 250, 365, 64


def _lokr_adapter(dit, gen) -> adapters.Adapter:
    layers = {}
    for path, m in adapters.target_modules(dit).items():
        (a, b), (c, d) = lokr_split(m.out_features), lokr_split(m.in_features)
        factors = {"lokr_w1": 0.02 * torch.randn(a, c, generator=gen),
                   "lokr_w2": 0.02 * torch.randn(b, d, generator=gen)}
        layers[path] = lokr.LoKr(factors, 1.0, m.in_features, m.out_features)
    return adapters.Adapter("lokr", layers)


def lokr_split(n: int) -> tuple[int, int]:
    """LyCORIS factorization(n, -1): the most balanced m <= k with m * k = n."""
    m = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)
    return m, n // m


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], CASES, CASES)
    args = p.parse_args()
    cases = common.setup(args, CASES)
    dtype, device = common.DTYPES[args.dtype], args.device
    config = common.real_config()
    with torch.device("meta"):
        dit = DiT(config.dit)
    dit = common.init_small_(dit.to_empty(device="cpu")).to(device=device, dtype=dtype).eval().requires_grad_(False)
    common.log(f"DiT: {common.param_gib(dit):.2f} GiB of weights")
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    x, ctx, cond = rnd(1, FRAMES, 64), rnd(1, FRAMES, 128), rnd(1, COND_TOKENS, config.dit.condition_dim)
    t = torch.full((1,), 0.7, device=device, dtype=dtype)
    mgr = adapters.manager(dit)
    lora = adapters.new_lora(dit, RANK, 2 * RANK, generator=gen)
    for layer in lora.layers.values():  # a trained-looking B instead of zeros
        layer.lora_B.data.normal_(0, 0.02, generator=gen)
    mgr.add("lora64", lora)
    mgr.add("lokr64", _lokr_adapter(dit, gen))
    if "step" in cases:
        with torch.inference_mode():
            kv = dit.prepare_condition(cond)
            results = {}
            for name, active, fuse in (("base", [], False), ("lora64", ["lora64"], False),
                                       ("lora64_fused", ["lora64"], True), ("lokr64", ["lokr64"], False),
                                       ("base_again", [], False)):
                mgr.set_active(active)
                if fuse:
                    mgr.fuse()
                results[name] = common.measure(lambda: dit(x, t, t, None, ctx, cross_kv=kv), repeats=args.repeats,
                                               warmup=args.warmup, device=device)
                mgr.unfuse()
                ref = results["base"]["median_s"]
                common.emit({"bench": "adapters", "case": f"step_{name}", "dtype": args.dtype, "device": device,
                             "overhead_vs_base": results[name]["median_s"] / ref - 1,
                             **common.result_fields("ours", results[name])})
    if "train" in cases:
        mgr.unload("lokr64")
        mgr.unload("lora64")
        config_t = train_lora.TrainConfig()
        trainable = adapters.new_lora(dit, RANK, 2 * RANK, 0.1, generator=gen)
        mgr.add("train", trainable, dtype=torch.float32)
        params = list(mgr.adapters["train"].parameters())
        for q in params:
            q.requires_grad_(True)
        batch = {"x0": x, "context": ctx, "condition": cond}
        null = rnd(1, 1, config.dit.condition_dim)
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

        def micro_step():
            with autocast:
                loss = train_lora.flow_matching_loss(dit, batch, null, torch.Generator().manual_seed(1),
                                                     cfg_ratio=config_t.cfg_ratio, mu=-0.4, sigma=1.0)
            loss.backward()
            for q in params:
                q.grad = None
            return loss.detach()

        for name, ckpt in (("train_ckpt", True), ("train_nockpt", False)):
            with train_lora.checkpointed_layers(dit, ckpt):
                r = common.measure(micro_step, repeats=args.repeats, warmup=args.warmup, device=device)
            common.emit({"bench": "adapters", "case": name, "dtype": args.dtype, "device": device,
                         "lora_params_m": sum(q.numel() for q in params) / 1e6, **common.result_fields("ours", r)})


if __name__ == "__main__":
    main()
