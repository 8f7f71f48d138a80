"""The planner's two token loops, step for step as the official PyTorch backend runs them.

`generate_cfg` is `_generate_with_cfg_custom`: the [cond, uncond] prompts are left-padded into one batch,
every step runs both rows, the float32 CFG logits pass the FSM and the sampling step, and the one sampled
token is appended to both rows. `generate_plain` is the CFG-free path: `_generate_with_constrained_decoding`
with an FSM (FSM first, then the sampling step), or transformers `generate` without one.

Both stop after EOS (`<|im_end|>`) or the pad token (`<|endoftext|>`), or after `max_new_tokens`, and
return the generated ids, the stop token included.

Codes phase with the FSM: once the FSM is in CODES_GENERATION only the 64000 code ids and EOS can be drawn,
and the official code computes CFG on exactly those ids (all others -inf). We then also score only those
rows of the tied head (a contiguous block plus EOS): the values are the same, the head costs ~3x less.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .model import Qwen3LM, StaticCache
from .sample import Sampling, cfg_combine, official_step, transformers_step
from .tokenizer import NUM_AUDIO_CODES, LMTokenizer

CODES_STATE = "CODES_GENERATION"


def _cache(model: Qwen3LM, cache: StaticCache | None, batch: int, capacity: int) -> StaticCache:
    """Reuse the caller's cache when it is large enough, else allocate one (once per call, never per step)."""
    w = model.embed_tokens.weight
    if cache is None or not cache.fits(batch, capacity, w.device, w.dtype):
        cache = model.new_cache(batch, capacity)
    cache.reset()
    return cache


def _code_rows(fsm, tok: LMTokenizer, vocab: int) -> slice | None:
    """The code block of the vocabulary when the FSM's codes-phase set is exactly codes + EOS, else None."""
    allowed = getattr(fsm, "code_ids_and_eos", None)
    if allowed is None or allowed.numel() != vocab:
        return None
    expected = torch.zeros(vocab, dtype=torch.bool)
    expected[tok.code_offset:tok.code_offset + NUM_AUDIO_CODES] = True
    expected[tok.eos_id] = True
    return slice(tok.code_offset, tok.code_offset + NUM_AUDIO_CODES) if torch.equal(allowed.cpu(), expected) else None


def _bar(total: int, desc: str, show: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="token", disable=not show, leave=False)


@torch.inference_mode()
def generate_cfg(model: Qwen3LM, tok: LMTokenizer, cond: list[int], uncond: list[int], *, cfg_scale: float,
                 sampling: Sampling, fsm, max_new_tokens: int, generator: torch.Generator | None,
                 cache: StaticCache | None = None, codes_phase: bool = False, progress: bool = False,
                 desc: str = "LM codes") -> tuple[list[int], StaticCache]:
    """CFG generation; returns (generated ids, the cache used, for reuse)."""
    device = model.embed_tokens.weight.device
    ids, mask = tok.pad_left([cond, uncond])  # [2, L] each, uncond (or cond) left-padded
    ids, mask = ids.to(device), mask.to(device)
    length = ids.shape[1]
    cache = _cache(model, cache, 2, length + max_new_tokens)
    # The cond row (with its padding, if any) and every sampled token: what the FSM and the penalty see.
    context = torch.empty(1, length + max_new_tokens, dtype=torch.long, device=device)
    context[0, :length] = ids[0]
    vocab = model.cfg.vocab_size
    rows = _code_rows(fsm, tok, vocab) if (fsm is not None and codes_phase) else None
    stops = (tok.eos_id, tok.pad_id)
    out: list[int] = []
    step_ids = ids
    with _bar(max_new_tokens, desc, progress) as bar:
        for step in range(max_new_tokens):
            h = model.hidden(step_ids, cache, mask if step == 0 else None)[:, -1]  # [2, hidden]
            n = length + step
            if rows is not None:
                # Codes + EOS only: [2, 64000] and [2, 1] from the head, CFG on them, -inf elsewhere.
                allowed = torch.cat([model.logits(h, rows), model.logits(h, slice(tok.eos_id, tok.eos_id + 1))], 1)
                guided = allowed[1:] + cfg_scale * (allowed[:1] - allowed[1:])  # float32 already
                scores = torch.full((1, vocab), float("-inf"), device=device)
                scores[:, rows] = guided[:, :NUM_AUDIO_CODES]
                scores[:, tok.eos_id] = guided[:, NUM_AUDIO_CODES]
            else:
                logits = model.logits(h)  # [2, V] float32
                scores = cfg_combine(logits[:1], logits[1:], cfg_scale)
            if fsm is not None:
                scores = fsm(context[:, :n], scores)
                if rows is not None and step == 0 and fsm.state != CODES_STATE:
                    raise RuntimeError(f"codes phase: the FSM is in {fsm.state}, expected {CODES_STATE} "
                                       "(the prompt must end with the CoT's </think>)")
            token = official_step(scores, context[:, :n], sampling, generator)
            t = int(token)
            if fsm is not None:
                fsm.update_state(t)
            out.append(t)
            context[0, n] = t
            bar.update(1)
            if t in stops:
                break
            step_ids = token.view(1, 1).expand(2, 1)  # the same token goes to both rows
    return out, cache


@torch.inference_mode()
def generate_plain(model: Qwen3LM, tok: LMTokenizer, prompt: list[int], *, sampling: Sampling, fsm,
                   max_new_tokens: int, generator: torch.Generator | None, cache: StaticCache | None = None,
                   progress: bool = False, desc: str = "LM") -> tuple[list[int], StaticCache]:
    """CFG-free generation of one row: the official constrained loop with an FSM, transformers' order without."""
    device = model.embed_tokens.weight.device
    length = len(prompt)
    cache = _cache(model, cache, 1, length + max_new_tokens)
    context = torch.empty(1, length + max_new_tokens, dtype=torch.long, device=device)
    context[0, :length] = torch.tensor(prompt, dtype=torch.long, device=device)
    stops = (tok.eos_id, tok.pad_id)
    out: list[int] = []
    step_ids = context[:, :length]
    with _bar(max_new_tokens, desc, progress) as bar:
        for step in range(max_new_tokens):
            n = length + step
            scores = model(step_ids, cache)  # [1, V] float32
            if fsm is not None:
                token = official_step(fsm(context[:, :n], scores), context[:, :n], sampling, generator)
            else:
                token = transformers_step(scores, context[:, :n], sampling, generator)
            t = int(token)
            if fsm is not None:
                fsm.update_state(t)
            out.append(t)
            context[0, n] = t
            bar.update(1)
            if t in stops:
                break
            step_ids = context[:, n:n + 1]
    return out, cache

