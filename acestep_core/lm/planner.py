"""The 5 Hz LM planner ("thinking"): caption + lyrics -> metadata (CoT) -> audio codes, as the official does.

`plan` is `LLMHandler.generate_with_stop_condition(infer_type="llm_dit")` on the PyTorch backend:
  phase 1 (skipped when bpm, keyscale, time signature and duration are all given, or use_cot_metas=False):
    the CoT prompt, no CFG (the official forces cfg_scale=1.0 here), the FSM injecting the user's values and
    stopping at the end of the reasoning, at most 3500 new tokens; its output is parsed into `metadata`;
  phase 2: the metadata written back as YAML CoT into the codes prompt, CFG against the "NO USER INPUT"
    prompt, the FSM allowing only code tokens until exactly 5 codes per second of the duration (the user's,
    else phase 1's), then EOS; at most codes + 10 new tokens.
`seed=s` draws every token from a generator seeded with s: the same tokens as the official call made right
after `torch.manual_seed(s)`. `plan_batch` is the official `batch_size=n, seeds=[...]` call: phase 1 once,
then phase 2 item by item, each from its own seed (the official PyTorch backend also runs them in turn).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from . import prompts
from .checkpoint import load_lm
from .constrained import MetadataConstraint, check_user_metadata
from .cot import extract_lyrics, format_cot, parse_lm_output
from .decode import generate_cfg, generate_plain
from .model import Qwen3LM
from .options import PlanRequest, lm_request, max_new_tokens, new_generator
from .tokenizer import LMTokenizer, code_values, parse_code_list, parse_code_string


@dataclass(frozen=True, eq=False)  # tensor fields: compare the fields you need
class Plan:
    metadata: dict  # the official parser's dict of phase 1 (bpm/duration ints), or the user's values
    caption: str  # the caption for the DiT: the CoT caption when use_cot_caption and one was written
    audio_codes: str  # "<|audio_code_N|>..." ("" when none were generated)
    cot_token_ids: torch.Tensor  # int64 [n]: phase 1's generated ids, EOS included (empty when skipped)
    code_token_ids: torch.Tensor  # int64 [m]: phase 2's generated ids, EOS included
    seed: int  # phase 2 drew from a generator seeded with this
    cot_seed: int  # phase 1 drew from a generator seeded with this (equal to `seed` for `plan`)
    timings: dict  # seconds and token counts per phase

    @property
    def codes(self) -> list[int]:
        """The audio codes as integers 0..63999."""
        return code_values(self.audio_codes)


@dataclass(frozen=True, eq=False)  # tensor fields: compare the fields you need
class Understanding:
    metadata: dict  # as the official `understand_audio_from_codes`: parsed CoT fields (+ "lyrics" when found)
    lyrics: str
    text: str  # the LM's raw output
    token_ids: torch.Tensor
    seed: int
    timings: dict


@dataclass(frozen=True, eq=False)  # tensor fields: compare the fields you need
class Sample:
    caption: str
    lyrics: str
    metadata: dict  # as the official `create_sample_from_query`: CoT fields + "lyrics" + "instrumental"
    instrumental: bool
    text: str
    token_ids: torch.Tensor
    seed: int
    timings: dict


def _ids(ids: list[int]) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


class Planner:
    """The 5 Hz LM with its tokenizer, constrained decoder and KV caches (kept between calls)."""

    def __init__(self, model: Qwen3LM, tokenizer: LMTokenizer, *, progress: bool = True):
        if len(tokenizer) > model.cfg.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                             f"{model.cfg.vocab_size}")
        self.model, self.tokenizer, self.progress = model, tokenizer, progress
        self.legacy_cfg_prompt = False  # the official handler's use_legacy_cfg_prompt switch (codes-phase uncond)
        self._fsms: dict[int, MetadataConstraint] = {}
        self._caches: dict[str, object] = {}

    def release_caches(self) -> None:
        """Free the KV caches kept between calls (phase 1's holds prompt + 3500 positions: ~0.9 GB for 1.7B fp32)."""
        self._caches.clear()

    # --- pieces -------------------------------------------------------------------------------------------

    def _fsm(self, max_duration: int) -> MetadataConstraint:
        if max_duration not in self._fsms:
            self._fsms[max_duration] = MetadataConstraint(self.tokenizer.raw, self.model.cfg.vocab_size,
                                                          max_duration=max_duration)
        return self._fsms[max_duration]

    def _plain(self, prompt: str, fsm, req: PlanRequest, n: int, generator, desc: str) -> list[int]:
        ids, self._caches["plain"] = generate_plain(
            self.model, self.tokenizer, self.tokenizer.encode(prompt), sampling=req.sampling, fsm=fsm,
            max_new_tokens=n, generator=generator, cache=self._caches.get("plain"), progress=self.progress,
            desc=desc)
        return ids

    def _think(self, req: PlanRequest, generator) -> tuple[dict, list[int]]:
        """Phase 1 -> (metadata, generated ids); the user's values and no ids when it is skipped."""
        given = ("bpm", "keyscale", "timesignature", "duration")
        if all(k in req.user_metadata for k in given) or not req.use_cot_metas:
            return dict(req.user_metadata), []
        fsm = None
        if req.constrained:
            fsm = self._fsm(req.max_duration)
            fsm.configure(phase="cot", user_metadata=req.user_metadata or None, stop_at_reasoning=True,
                          skip_caption=not req.use_cot_caption, skip_language=not req.use_cot_language,
                          skip_genres=True, target_duration=None)
        n = max_new_tokens(None, "cot", req.max_duration)
        ids = self._plain(prompts.cot_prompt(req.caption, req.lyrics), fsm, req, n, generator, "LM phase 1 (CoT)")
        metadata, _ = parse_lm_output(self.tokenizer.decode(ids))
        return metadata, ids

    def _codes(self, req: PlanRequest, metadata: dict, generator) -> list[int]:
        """Phase 2 -> generated ids (codes, then EOS)."""
        target = req.target_duration
        if (target is None or target <= 0) and metadata.get("duration"):
            try:  # without a user duration, phase 1's duration sets the number of codes
                target = float(metadata["duration"]) if float(metadata["duration"]) > 0 else target
            except (TypeError, ValueError):
                pass
        cond = prompts.codes_prompt(req.caption, req.lyrics, format_cot(metadata))
        fsm = None
        if req.constrained:
            fsm = self._fsm(req.max_duration)
            fsm.configure(phase="codes", user_metadata=None, stop_at_reasoning=False, skip_caption=True,
                          skip_language=True, skip_genres=False, target_duration=target)
        n = max_new_tokens(target, "codes", req.max_duration)
        if req.cfg_scale <= 1.0:
            return self._plain(cond, fsm, req, n, generator, "LM phase 2 (codes)")
        if self.legacy_cfg_prompt:
            uncond = prompts.codes_uncond_legacy_prompt(req.caption, req.lyrics, req.negative_prompt)
        else:
            uncond = prompts.codes_uncond_prompt(req.negative_prompt)
        ids, self._caches["cfg"] = generate_cfg(
            self.model, self.tokenizer, self.tokenizer.encode(cond), self.tokenizer.encode(uncond),
            cfg_scale=req.cfg_scale, sampling=req.sampling, fsm=fsm, max_new_tokens=n, generator=generator,
            cache=self._caches.get("cfg"), codes_phase=True, progress=self.progress, desc="LM phase 2 (codes)")
        return ids

    def _plan(self, req: PlanRequest, metadata: dict, cot_ids: list[int], cot_seed: int, seed: int,
              generator, t_cot: float) -> Plan:
        t0 = time.perf_counter()
        ids = self._codes(req, metadata, generator)
        t_codes = time.perf_counter() - t0
        _, codes = parse_lm_output(self.tokenizer.decode(ids))
        caption = metadata.get("caption", req.caption) if req.use_cot_caption else req.caption
        timings = {"phase1_s": t_cot, "phase2_s": t_codes, "total_s": t_cot + t_codes,
                   "phase1_tokens": len(cot_ids), "phase2_tokens": len(ids)}
        return Plan(metadata=dict(metadata), caption=caption, audio_codes=codes, cot_token_ids=_ids(cot_ids),
                    code_token_ids=_ids(ids), seed=seed, cot_seed=cot_seed, timings=timings)

    # --- public API ---------------------------------------------------------------------------------------

    def plan(self, caption: str, lyrics: str, *, bpm=None, keyscale=None, timesignature=None, duration=None,
             vocal_language=None, seed: int | None = None, temperature: float = 0.85, cfg_scale: float = 2.0,
             top_k: int | None = None, top_p: float | None = 0.9, repetition_penalty: float = 1.0,
             negative_prompt: str = prompts.DEFAULT_NEGATIVE_PROMPT, use_cot_metas: bool = True,
             use_cot_caption: bool = True, use_cot_language: bool = True, constrained: bool = True,
             max_duration: int = 600) -> Plan:
        """caption + lyrics (+ whichever of bpm, keyscale, timesignature, duration are known) -> Plan.

        The defaults are the official ones. A given vocal_language (other than "unknown") is injected into
        the CoT like the official format / create-sample paths do; the official `generate_with_stop_condition`
        has no language input, so vocal_language=None is exactly its call.
        """
        req = lm_request(caption, lyrics, bpm=bpm, keyscale=keyscale, timesignature=timesignature,
                         duration=duration, vocal_language=vocal_language, temperature=temperature,
                         cfg_scale=cfg_scale, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                         negative_prompt=negative_prompt, use_cot_metas=use_cot_metas,
                         use_cot_caption=use_cot_caption, use_cot_language=use_cot_language,
                         constrained=constrained, max_duration=max_duration)
        generator, seed = new_generator(seed, self.model.embed_tokens.weight.device)
        t0 = time.perf_counter()
        metadata, cot_ids = self._think(req, generator)
        return self._plan(req, metadata, cot_ids, seed, seed, generator, time.perf_counter() - t0)

    def plan_batch(self, caption: str, lyrics: str, *, batch_size: int | None = None, seeds=None,
                   seed: int | None = None, **options) -> tuple[Plan, ...]:
        """The official `batch_size=n, seeds=[...]` call: phase 1 once (from `seed`), phase 2 per item from seeds[i].

        Missing seeds are drawn at random and extra ones dropped, as official; batch_size defaults to
        len(seeds). One item is a plain `plan` (seeded with `seed`, else seeds[0]), as the official single mode.
        """
        if seeds is not None:
            seeds = list(seeds)
        n = batch_size if batch_size is not None else (len(seeds) if seeds else None)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"plan_batch needs batch_size >= 1 or a non-empty seeds list, "
                             f"got batch_size={batch_size!r}")
        if n == 1:
            return (self.plan(caption, lyrics, seed=seed if seed is not None else (seeds or [None])[0], **options),)
        seeds = (seeds or [])[:n]
        seeds += [random.randint(0, 2**32 - 1) for _ in range(n - len(seeds))]
        req = lm_request(caption, lyrics, **options)
        device = self.model.embed_tokens.weight.device
        generator, cot_seed = new_generator(seed, device)
        t0 = time.perf_counter()
        metadata, cot_ids = self._think(req, generator)
        t_cot = time.perf_counter() - t0
        plans = []
        for item_seed in seeds:
            generator, item_seed = new_generator(item_seed, device)
            plans.append(self._plan(req, metadata, cot_ids, cot_seed, item_seed, generator, t_cot))
        return tuple(plans)

    def plan_codes(self, caption: str, lyrics: str, metadata: dict, *, target_duration: float | None = None,
                   seed: int | None = None, **options) -> Plan:
        """Phase 2 alone from given CoT metadata: what `plan` runs once phase 1 is skipped or done.

        `metadata` is written into the CoT as is (no range checks; the user-input checks are `plan`'s);
        target_duration None takes metadata["duration"]. Options: plan's sampling and CFG options.
        """
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        req = lm_request(caption, lyrics, **options)
        req = req.replace(target_duration=None if target_duration is None else float(target_duration))
        generator, seed = new_generator(seed, self.model.embed_tokens.weight.device)
        return self._plan(req, {k: v for k, v in metadata.items() if v is not None}, [], seed, seed, generator, 0.0)

    def understand(self, audio_codes, *, temperature: float = 0.3, top_k: int | None = None,
                   top_p: float | None = None, repetition_penalty: float = 1.0, constrained: bool = True,
                   seed: int | None = None, max_duration: int = 600) -> Understanding:
        """Audio codes (a "<|audio_code_N|>..." string or a sequence of ints) -> metadata + lyrics."""
        if isinstance(audio_codes, str):
            parse_code_string(audio_codes)  # ValueError for ids past 63999 or a string without codes
            codes = audio_codes
        else:
            codes = self.tokenizer.codes_to_string(parse_code_list(audio_codes))
            if not codes:
                raise ValueError("audio_codes is empty")
        req = lm_request("", "", temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, constrained=constrained, max_duration=max_duration)
        metadata, lyrics, text, ids, seed, t = self._free_form(prompts.understand_prompt(codes), None, req, seed)
        if lyrics:
            metadata["lyrics"] = lyrics
        return Understanding(metadata=metadata, lyrics=lyrics, text=text, token_ids=_ids(ids), seed=seed, timings=t)

    def inspire(self, query: str, *, instrumental: bool = False, vocal_language: str | None = None,
                temperature: float = 0.85, top_k: int | None = None, top_p: float | None = None,
                repetition_penalty: float = 1.0, constrained: bool = True, seed: int | None = None,
                max_duration: int = 600) -> Sample:
        """The official simple mode (`create_sample_from_query`): a short query -> caption, lyrics, metadata."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        if not query.strip():
            query = prompts.DEFAULT_NEGATIVE_PROMPT
        user = None
        if vocal_language is not None and vocal_language.strip() and vocal_language.strip().lower() != "unknown":
            user = check_user_metadata({"language": vocal_language.strip()}, max_duration)
        req = lm_request("", "", temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, constrained=constrained, max_duration=max_duration)
        metadata, lyrics, text, ids, seed, t = self._free_form(prompts.inspire_prompt(query, bool(instrumental)),
                                                               user, req, seed)
        if lyrics:
            metadata["lyrics"] = lyrics
        elif instrumental:
            metadata["lyrics"] = "[Instrumental]"
        metadata["instrumental"] = bool(instrumental)
        return Sample(caption=metadata.get("caption", ""), lyrics=metadata.get("lyrics", ""), metadata=metadata,
                      instrumental=bool(instrumental), text=text, token_ids=_ids(ids), seed=seed, timings=t)

    def _free_form(self, prompt: str, user_metadata, req: PlanRequest, seed):
        """The official "understand" generation phase: CoT metadata, then free text (lyrics) until EOS."""
        generator, seed = new_generator(seed, self.model.embed_tokens.weight.device)
        fsm = None
        if req.constrained:
            fsm = self._fsm(req.max_duration)
            fsm.configure(phase="understand", user_metadata=user_metadata, stop_at_reasoning=False,
                          skip_caption=False, skip_language=False, skip_genres=False, target_duration=None)
        t0 = time.perf_counter()
        ids = self._plain(prompt, fsm, req, max_new_tokens(None, "understand", req.max_duration), generator, "LM")
        elapsed = time.perf_counter() - t0
        text = self.tokenizer.decode(ids)
        metadata, _ = parse_lm_output(text)
        return metadata, extract_lyrics(text), text, ids, seed, {"total_s": elapsed, "tokens": len(ids)}


def load_planner(path, device="cpu", dtype: torch.dtype = torch.float32, *, progress: bool = True) -> Planner:
    """A Planner from an official LM folder (e.g. checkpoints/acestep-5Hz-lm-1.7B) or our converted layout."""
    model, tokenizer = load_lm(path, device, dtype)
    return Planner(model, tokenizer, progress=progress)
