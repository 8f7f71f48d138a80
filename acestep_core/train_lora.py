"""`acestep train-lora`: fine-tune a LoRA on your own songs; the result is an official-format PEFT adapter.

    acestep train-lora --checkpoint ACE-Step/Ace-Step1.5 --data my_songs/ --out my_lora --steps 1000
    acestep generate --checkpoint ACE-Step/Ace-Step1.5 --lora my_lora --prompt "..."

The training step is the official training_v2 one (`FixedLoRAModule.training_step`):

    x0 = VAE latents of a song, eps ~ N(0, 1), t = max of two draws of sigmoid(N(mu = -0.4, sigma = 1))
    x_t = t * eps + (1 - t) * x0,   loss = MSE(DiT(x_t, t, r = t, condition, context), eps - x0)

with the whole condition of a song replaced by the learned null embedding with probability 0.15 (CFG dropout),
the DiT frozen and only the LoRA (rank 64, alpha 128, dropout 0.1 on q/k/v/o of self- and cross-attention)
trained, AdamW (weight decay 0.01) with gradient clipping at 1.0, a learning rate warmed up linearly from 10 %
over min(warmup, steps / 10) optimizer steps then cosine-annealed to 1 %, gradient accumulation, gradient
checkpointing per DiT layer and bf16 autocast where the hardware has it. The official sampler of t takes the larger
of two draws (it samples t and r and keeps t = max, then sets r = t); so does this one.

Reproducible: every random draw of micro-batch k (song order, noise, t, CFG dropout, LoRA dropout) comes from
seeds derived from (--seed, k), so a run resumed from a checkpoint continues exactly as if it had not stopped
(bitwise on the CPU). Checkpoints (every --save-every steps) are the adapter plus the optimizer state, in
safetensors, under OUT/checkpoints/step-NNNNNN/.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from . import adapters, lora, train_data
from .hub import resolve_checkpoint
from .pipeline import load_pipeline
from .safetensors_io import CheckpointError, read_safetensors, write_safetensors

ADAPTER_NAME = "train-lora"
STATE_FILE = "training_state.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 64
    alpha: float = 128.0
    dropout: float = 0.1
    lr: float = 1e-4
    steps: int = 1000  # optimizer steps
    batch_size: int = 1
    grad_accum: int = 4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    cfg_ratio: float = 0.15
    timestep_mu: float = -0.4
    timestep_sigma: float = 1.0
    seed: int = 42
    save_every: int = 100
    gradient_checkpointing: bool = True
    bf16_autocast: bool = False


# --- the step -------------------------------------------------------------------------------------------------

def sample_timesteps(batch: int, generator: torch.Generator, mu: float, sigma: float) -> torch.Tensor:
    """[B] float32: the larger of two logit-normal draws (official sample_timesteps with r = t)."""
    t = torch.sigmoid(torch.randn(batch, generator=generator) * sigma + mu)
    r = torch.sigmoid(torch.randn(batch, generator=generator) * sigma + mu)
    return torch.maximum(t, r)


def flow_matching_loss(dit, batch: dict[str, torch.Tensor], null_emb: torch.Tensor, generator: torch.Generator, *,
                       cfg_ratio: float, mu: float, sigma: float) -> torch.Tensor:
    """The fp32 loss of one micro-batch. Draws, in the official order: CFG dropout, noise, t.

    All draws come from `generator` on the CPU, then move to the batch's device: the same numbers on every device.
    """
    x0, context, condition = batch["x0"], batch["context"], batch["condition"]  # [B, T, C], [B, T, 2C], [B, L, W]
    b = x0.shape[0]
    keep = torch.rand(b, generator=generator) >= cfg_ratio  # official: a draw below cfg_ratio drops the condition
    eps = torch.randn(x0.shape, generator=generator)
    t = sample_timesteps(b, generator, mu, sigma)
    keep, eps, t = keep.to(x0.device), eps.to(x0), t.to(x0)
    null = null_emb.to(condition).expand_as(condition)  # [1, 1, W] -> [B, L, W]
    condition = torch.where(keep[:, None, None], condition, null)
    xt = t[:, None, None] * eps + (1 - t[:, None, None]) * x0
    v = dit(xt, t, t, condition, context)
    # fp32 for the reduction and the backward whatever the compute dtype (official).
    return F.mse_loss(v.float(), (eps - x0).float())


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The official schedule (LinearLR 0.1 -> 1 then CosineAnnealingLR to 0.01 * lr), in closed form."""
    warmup = min(warmup_steps, max(1, total_steps // 10))
    if step < warmup:
        return base_lr * (0.1 + 0.9 * step / warmup)
    span, floor = max(1, total_steps - warmup), 0.01 * base_lr
    return floor + (base_lr - floor) * (1 + math.cos(math.pi * (step - warmup) / span)) / 2


def micro_seed(seed: int, micro: int) -> int:
    return (seed * 1_000_003 + micro) % (2**63)


@functools.lru_cache(maxsize=4)
def _order(seed: int, epoch: int, n: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(micro_seed(seed, -1 - epoch))).tolist()


def batch_indices(micro: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Songs of micro-batch `micro`: consecutive slices of one shuffled order per epoch."""
    return [_order(seed, pos // n, n)[pos % n] for pos in range(micro * batch_size, (micro + 1) * batch_size)]


@contextlib.contextmanager
def checkpointed_layers(dit, enabled: bool = True):
    """Recompute each DiT layer's activations in the backward instead of keeping them (instance-level forward)."""
    if enabled:
        for layer in dit.layers:
            layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    try:
        yield
    finally:
        if enabled:
            for layer in dit.layers:
                del layer.forward  # back to the class's forward


# --- checkpoints ----------------------------------------------------------------------------------------------

def _save_checkpoint(folder: str, adapter, optimizer, params, step: int, config: TrainConfig) -> None:
    lora.save_peft(adapter.by_path(), folder, rank=config.rank, alpha=config.alpha, dropout=config.dropout)
    tensors = {}
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"{i}.{key}"] = value.detach().cpu() if torch.is_tensor(value) else torch.tensor(value)
    write_safetensors(tensors, os.path.join(folder, STATE_FILE),
                      metadata={"step": str(step), "config": json.dumps(asdict(config))})


def latest_checkpoint(out_dir: str) -> str | None:
    root = os.path.join(out_dir, "checkpoints")
    found = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, STATE_FILE))) \
        if os.path.isdir(root) else []
    return os.path.join(root, found[-1]) if found else None


def _resume(folder: str, adapter, optimizer, params, config: TrainConfig) -> int:
    state_file = os.path.join(folder, STATE_FILE)
    with safe_open(state_file, framework="pt") as f:
        meta = f.metadata() or {}
    saved = json.loads(meta.get("config", "{}"))
    for key in ("rank", "alpha", "batch_size", "grad_accum", "seed"):
        if saved.get(key) != getattr(config, key):
            raise ValueError(f"resume: {folder} was trained with {key}={saved.get(key)!r}, this run has "
                             f"{getattr(config, key)!r}")
    weights = read_safetensors(os.path.join(folder, lora.PEFT_WEIGHTS))
    with torch.no_grad():
        for path, layer in adapter.by_path().items():
            for side in ("A", "B"):
                getattr(layer, f"lora_{side}").copy_(weights[f"{lora.PEFT_PREFIX}{path}.lora_{side}.weight"])
    state = read_safetensors(state_file)
    saved_state = optimizer.state_dict()
    saved_state["state"] = {i: {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)}
                            for i in range(len(params))}
    optimizer.load_state_dict(saved_state)
    return int(meta["step"])


# --- the loop -------------------------------------------------------------------------------------------------

def train(pipe, files: list[str], out_dir: str, config: TrainConfig, *, resume: bool = False,
          progress: bool = True) -> dict:
    """Train a LoRA on the cached songs `files` (train_data.build_cache); writes the PEFT adapter to `out_dir`.

    The pipeline's DiT is left as it was: the training adapter is unloaded at the end. Returns a summary.
    """
    if not files:
        raise ValueError("files: no cached song to train on")
    dit = pipe.dit
    adapter = adapters.new_lora(dit, config.rank, config.alpha, config.dropout,
                                generator=torch.Generator().manual_seed(config.seed))
    mgr = adapters.manager(dit)
    previous = dict(mgr.active)
    mgr.add(ADAPTER_NAME, adapter, dtype=torch.float32)  # fp32 master weights whatever the model dtype
    try:
        adapter = mgr.adapters[ADAPTER_NAME]
        mgr.set_active([ADAPTER_NAME])
        return _train(pipe, adapter, files, out_dir, config, resume, progress)
    finally:
        mgr.unload(ADAPTER_NAME)
        mgr.set_active(list(previous), list(previous.values()))


def _train(pipe, adapter, files: list[str], out_dir: str, config: TrainConfig, resume: bool, progress: bool) -> dict:
    dit, device = pipe.dit, pipe.device
    dtype = dit.proj_in.weight.dtype  # what the DiT takes as input
    params = list(adapter.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start, found = 0, latest_checkpoint(out_dir) if resume else None
    if found:
        start = _resume(found, adapter, optimizer, params, config)
    null_emb = pipe.condition_encoder.null_condition_emb.detach()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast)
    log_file = os.path.join(out_dir, "train_log.jsonl")
    os.makedirs(out_dir, exist_ok=True)
    losses = []
    adapter.train()
    # The per-micro-batch seeding below must not leave the caller's global RNG changed: fork it.
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with rng, checkpointed_layers(dit, config.gradient_checkpointing), open(log_file, "a", encoding="utf-8") as log, \
            tqdm(total=config.steps, initial=start, desc="training", unit="step", disable=not progress) as bar:
        for step in range(start, config.steps):
            lr = lr_at(step, config.lr, config.warmup_steps, config.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for k in range(config.grad_accum):
                micro = step * config.grad_accum + k
                seed = micro_seed(config.seed, micro)
                torch.manual_seed(seed)  # LoRA dropout (global RNG, every device)
                idx = batch_indices(micro, config.batch_size, len(files), config.seed)
                batch = train_data.load_batch([files[i] for i in idx], pipe.silence_latent, device=device,
                                              dtype=dtype)
                with autocast:
                    loss = flow_matching_loss(dit, batch, null_emb, torch.Generator().manual_seed(seed),
                                              cfg_ratio=config.cfg_ratio, mu=config.timestep_mu,
                                              sigma=config.timestep_sigma)
                (loss / config.grad_accum).backward()
                loss_sum += loss.item()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss_sum / config.grad_accum)
            log.write(json.dumps({"step": step + 1, "loss": losses[-1], "lr": lr}) + "\n")
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if (step + 1) % config.save_every == 0 and step + 1 < config.steps:
                log.flush()
                _save_checkpoint(os.path.join(out_dir, "checkpoints", f"step-{step + 1:06d}"), adapter,
                                 optimizer, params, step + 1, config)
    lora.save_peft(adapter.by_path(), out_dir, rank=config.rank, alpha=config.alpha, dropout=config.dropout)
    return {"start_step": start, "steps": config.steps, "losses": losses, "modules": len(adapter.paths)}


# --- the command ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="acestep train-lora", description="Fine-tune a LoRA of the DiT on your songs; "
                                "writes an official-format PEFT adapter (docs/adapters.md).")
    p.add_argument("--checkpoint", required=True, metavar="DIR_OR_HUB_ID", help="the model to adapt (as for generate)")
    p.add_argument("--variant", help="model in a folder holding several: turbo, base, sft, ...")
    p.add_argument("--data", required=True, metavar="FOLDER_OR_JSONL",
                   help="a folder of 48 kHz audio files with song.txt / song.json beside each, or a JSON Lines file")
    p.add_argument("--out", required=True, metavar="ADAPTER_DIR", help="where the adapter and checkpoints go")
    p.add_argument("--cache", metavar="DIR", help="encoded songs (default OUT/cache); reused by later runs")
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--dropout", type=float, default=d.dropout, help="LoRA dropout (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="capped at steps / 10 (official)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--cfg-ratio", type=float, default=d.cfg_ratio, help="probability of the null condition")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-every", type=int, default=d.save_every, metavar="STEPS", help="checkpoint interval")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT/checkpoints")
    p.add_argument("--max-seconds", type=float, default=240.0, help="songs are cut to this length (default 240)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="base weights (default: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 autocast; auto (default): on a GPU with bf16, not on the CPU")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    return p


def _config(args) -> TrainConfig:
    checks = (("--rank", args.rank >= 1), ("--alpha", args.alpha > 0), ("--dropout", 0 <= args.dropout < 1),
              ("--lr", args.lr > 0), ("--steps", args.steps >= 1), ("--batch-size", args.batch_size >= 1),
              ("--grad-accum", args.grad_accum >= 1), ("--warmup-steps", args.warmup_steps >= 0),
              ("--weight-decay", args.weight_decay >= 0), ("--cfg-ratio", 0 <= args.cfg_ratio < 1),
              ("--save-every", args.save_every >= 1), ("--max-seconds", args.max_seconds >= train_data.MIN_SECONDS))
    for flag, ok in checks:
        if not ok:
            raise ValueError(f"{flag}: {getattr(args, flag[2:].replace('-', '_'))} is out of range")
    return TrainConfig(rank=args.rank, alpha=args.alpha, dropout=args.dropout, lr=args.lr, steps=args.steps,
                       batch_size=args.batch_size, grad_accum=args.grad_accum, warmup_steps=args.warmup_steps,
                       weight_decay=args.weight_decay, cfg_ratio=args.cfg_ratio, seed=args.seed,
                       save_every=args.save_every, gradient_checkpointing=not args.no_gradient_checkpointing)


def run(args) -> int:
    config = _config(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    # auto: bf16 autocast on a GPU that has bf16; on a CPU it is opt-in (measured slower there, docs/adapters.md).
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda"
                                        and torch.cuda.is_bf16_supported())
    config = TrainConfig(**{**asdict(config), "bf16_autocast": bf16})
    songs, problems = train_data.discover(args.data)
    pipe = load_pipeline(resolve_checkpoint(args.checkpoint, args.variant), device, dtype, variant=args.variant)
    files, more, reused = train_data.build_cache(pipe, songs, args.cache or os.path.join(args.out, "cache"),
                                                 max_seconds=args.max_seconds)
    for where, why in problems + more:
        print(f"skipped {where}: {why}", file=sys.stderr)
    print(f"data: {len(files)} songs ready ({reused} from the cache), {len(problems) + len(more)} skipped",
          file=sys.stderr)
    if not files:
        raise ValueError(f"--data: no usable song in {args.data}")
    # Training needs the DiT, the null condition and the silence latent only: free the encoders' memory.
    pipe.text_encoder = pipe.vae = pipe.audio_tokenizer = pipe.audio_detokenizer = None
    print(f"training a rank {config.rank} LoRA on {device} ({dtype_name} weights, "
          f"{'bf16 autocast' if bf16 else 'fp32 compute'})", file=sys.stderr)
    summary = train(pipe, files, args.out, config, resume=args.resume)
    last = f", last loss {summary['losses'][-1]:.4f}" if summary["losses"] else ""
    print(f"wrote {args.out} (PEFT LoRA, {summary['modules']} modules, rank {config.rank}, alpha {config.alpha:g}; "
          f"steps {summary['start_step']}..{summary['steps']}{last})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`acestep train-lora ...`; returns the exit status (2: a bad argument or data, 1: anything else)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its message (or --help)
        return int(e.code or 0)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted (the last checkpoint is kept; --resume continues from it)", file=sys.stderr)
        return 130
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
