"""Constrained decoding of the 5 Hz LM planner: the official metadata state machine, on tensor masks.

The planner LM writes a fixed metadata block, then audio codes:

    <think>
    bpm: 120
    caption: a calm piano ballad ...      (may wrap; continuation lines start with a space)
    duration: 30
    genres: ...                           (only with skip_genres=False)
    keyscale: C major
    language: en                          (not with skip_language=True)
    timesignature: 4
    </think>
    <|audio_code_N|> ... <|im_end|>

``MetadataConstraint`` reproduces the official ``MetadataConstrainedLogitsProcessor``
(acestep/constrained_logits_processor.py, PyTorch path) rule for rule, quirks included, because the LM was
only ever sampled under it:
- field names and the tags are forced one token at a time: the longest prefix of the rest of the string
  that the tokenizer encodes as ONE token (``"caption:"`` -> ``c``, ``aption``, ``:``); the position
  advances by the decoded length of the token taken;
- a user-given field value is injected as ``encode(" " + str(value) + "\\n")``, one token per step;
- bpm (30..300), duration (10..max_duration) and timesignature (2/3/4/6) follow token prefix trees built
  from ``encode("duration: " + value)`` minus the tokens of ``"duration:"``: newline is allowed once the
  tokens so far spell a whole value (timesignature and keyscale then allow ONLY the newline);
  with ``target_duration`` set, a generated duration is forced to ``str(int(target_duration))`` digit by
  digit (no leading space) then newline;
- keyscale: the same tree over the 70 keyscales; language: the tree over the 51 codes, but the first token
  is the single best-scoring first token of any language (ties: official candidate order);
- caption: anything but audio codes and the backtick, at most 512 tokens (then only newline); after a
  token containing a newline, if the argmax of the INPUT scores decodes to text not starting with a space
  or tab, the caption is over and the next field name is left completely free until a token containing
  ':' arrives; the text before it picks the value state (duration/genres/keyscale/language/
  timesignature), any other name moves on to the field after the caption;
- genres (the official genres vocabulary file is empty, so its no-vocabulary rule): newline banned while
  the value is blank, then free; once softmax(newline) beats every other token only the newline is allowed
  and the state moves on already inside the call (so that newline then counts as the first character of
  ``keyscale:``, exactly as the official does);
- ``</think>``: with ``stop_at_reasoning`` only EOS is allowed instead (phase-1 output ends with EOS right
  after the timesignature line); otherwise ``</think>`` leads to codes (phase "cot"/"codes") or to free text
  without audio codes (phase "understand", the official lyrics/understanding mode);
- codes: the 64000 code ids + EOS; with ``target_duration`` (target_codes = int(5 * seconds), when > 0) EOS
  is banned until that many codes, then only EOS. Phase "codes" jumps straight to codes on the first call
  when the prompt (input_ids) already contains ``</think>``.
Transitions follow the official table: skipped fields are left out, so a value state reached by name
after the caption for a skipped field (e.g. ``language:`` with skip_language) never leaves on newline.

Deviations, all outside what the official can run: vocab_size may exceed len(tokenizer) (the real 1.7B
head has 217204 rows, its tokens end at 215668; the official masks would not broadcast); ids past the
tokenizer are never allowed. One sequence per call ([1, n] / [1, V]): the PyTorch path of the official
never passes more (CFG passes only the cond row; batches run item by item).

How the official drives it (acestep/llm_inference.py) -- the planner should do the same:
- ``_setup_constrained_processor`` resets and reconfigures one shared processor before each generation,
  i.e. ``configure(...)``. Phase 1: phase="cot", stop_at_reasoning=True, skip_genres=True,
  skip_caption=not use_cot_caption, skip_language=not use_cot_language, user metadata as given,
  target_duration=None, and no CFG. Phase 2: phase="codes", user_metadata=None, skip_caption=
  skip_language=True, stop_at_reasoning=False, target_duration as requested. Batch items (run one by one):
  user_metadata=None, stop_at_reasoning=False, all skips True.
- ``_generate_with_cfg_custom`` (cfg_scale > 1): rows [cond, uncond]; per step take the last-position
  logits; IF ``state == "CODES_GENERATION"`` (read BEFORE calling the processor, so the very first codes
  step still does full-vocab CFG) compute CFG in float32 only on ``code_ids_and_eos`` ids
  (``uncond + cfg * (cond - uncond)``, others -inf), else full-vocab float32 CFG with NaN -> -inf; THEN
  call the processor on the CFG logits with the COND row's ids (prompt + generated); then repetition
  penalty, top-k, top-p, temperature + multinomial; then ``update_state(token)`` once; the same token is
  appended to both rows. Without CFG (``_generate_with_constrained_decoding``): the processor runs first
  on the raw logits, then the same filters, sampling and ``update_state``.
"""

import torch
from tokenizers import Tokenizer

from .metadata_values import (
    BPM_MAX, BPM_MIN, DURATION_MAX, DURATION_MIN, KEYSCALES, LANGUAGES, METADATA_FIELDS, TIMESIGNATURES,
    check_user_metadata,
)

__all__ = [
    "MetadataConstraint", "PHASES", "KEYSCALES", "LANGUAGES", "BPM_MIN", "BPM_MAX", "DURATION_MIN",
    "DURATION_MAX", "TIMESIGNATURES", "check_user_metadata",
]

PHASES = ("cot", "codes", "understand")
AUDIO_CODE_COUNT = 64000  # FSQ codebook size: <|audio_code_N|> with N >= 64000 is not a code
CAPTION_MAX_TOKENS = 512

# Official FSMState names (only those the machine can reach).
THINK_TAG, NEWLINE_AFTER_THINK, THINK_END_TAG = "THINK_TAG", "NEWLINE_AFTER_THINK", "THINK_END_TAG"
CODES_GENERATION, COMPLETED = "CODES_GENERATION", "COMPLETED"
_FIELDS = METADATA_FIELDS  # the order the fields are written in
_NAME = dict(zip(_FIELDS, ("BPM_NAME", "CAPTION_NAME", "DURATION_NAME", "GENRES_NAME", "KEYSCALE_NAME",
                           "LANGUAGE_NAME", "TIMESIG_NAME")))
_VALUE = {field: name.replace("_NAME", "_VALUE") for field, name in _NAME.items()}
_FIXED_TEXT = {THINK_TAG: "<think>", NEWLINE_AFTER_THINK: "\n", THINK_END_TAG: "</think>",
               **{_NAME[field]: field + ":" for field in _FIELDS}}
_NUMERIC = (_VALUE["bpm"], _VALUE["duration"], _VALUE["timesignature"])
_NAMED_AFTER_CAPTION = ("duration", "genres", "keyscale", "language", "timesignature")


class MetadataConstraint:
    """The official CoT/codes state machine for one tokenizer; build once, ``configure`` per generation.

    ``__call__(input_ids [1, n], scores [1, vocab_size])`` returns a NEW tensor (the input is not modified)
    with every disallowed id set to -inf, and may advance the state (codes-phase jump, caption end,
    language pick, genres end). ``update_state(token)`` must follow with the token actually sampled.
    Allowed sets are precomputed bool [vocab_size] masks (complements cached per device) or small id
    whitelists; a step costs O(vocab) tensor work and at most one tokenizer call in each of ``__call__`` and
    ``update_state``, never a Python loop over the vocabulary.
    """

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, *, max_duration: int = DURATION_MAX):
        n_tokens = tokenizer.get_vocab_size(with_added_tokens=True)
        if not isinstance(vocab_size, int) or vocab_size < n_tokens:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer ({n_tokens} tokens)")
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.newline_id = self._ids("\n")[-1]
        self._digit_ids = [self._ids(str(d))[-1] for d in range(10)]
        self.eos_id = self._added_id("<|im_end|>")
        self.audio_code_offset = self._added_id("<|audio_code_0|>")
        self._think_end_ids = torch.tensor(self._ids("</think>"))

        codes = [tokenizer.token_to_id(f"<|audio_code_{n}|>") for n in range(AUDIO_CODE_COUNT)]
        codes = [token_id for token_id in codes if token_id is not None]
        # Constant allowed masks, bool [vocab_size]; per-step whitelists are small id tensors instead.
        is_code = self._mask(codes)
        self._is_token = torch.arange(vocab_size) < n_tokens  # False on the head's padding rows
        self._codes_only = is_code
        self._codes_and_eos = is_code | self._mask(self.eos_id)
        self._no_codes = self._is_token & ~is_code
        self._caption_ok = self._no_codes & ~self._mask(self._ids("`")[-1])
        self._no_newline = self._is_token & ~self._mask(self.newline_id)
        self._blocked_on = {}  # (id of an allowed mask, device) -> its complement on that device

        self._fixed = {state: [self._single_token_prefix(text[pos:]) for pos in range(len(text))]
                       for state, text in _FIXED_TEXT.items()}
        self._trees = {
            "bpm": self._tree("bpm:", [str(v) for v in range(BPM_MIN, BPM_MAX + 1)]),
            "timesignature": self._tree("timesignature:", [str(v) for v in TIMESIGNATURES]),
            "keyscale": self._tree("keyscale:", KEYSCALES, first_is_note=True),
            "language": self._tree("language:", LANGUAGES),
        }
        self.set_max_duration(max_duration)
        self.configure(phase="cot")

    # ---- construction helpers -------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _decode(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _added_id(self, content: str) -> int:
        token_id = self.tokenizer.token_to_id(content)
        if token_id is None:
            raise ValueError(f"tokenizer has no {content} token; is this the 5 Hz LM tokenizer?")
        return token_id

    def _mask(self, ids) -> torch.Tensor:
        """Bool [vocab_size] mask that is True exactly at ``ids`` (an int or a list)."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[torch.as_tensor(ids, dtype=torch.long)] = True
        return mask

    @staticmethod
    def _only(ids) -> torch.Tensor:
        """A whitelist: 1-D int64 tensor of the allowed ids (an int, a list or a tensor; may be empty)."""
        return torch.as_tensor(ids, dtype=torch.long).reshape(-1)

    def _single_token_prefix(self, rest: str) -> int:
        """The token of the longest prefix of ``rest`` that encodes to exactly one token."""
        prefixes = [rest[:end] for end in range(len(rest), 0, -1)]  # longest first
        for encoding in self.tokenizer.encode_batch(prefixes, add_special_tokens=False):
            if len(encoding.ids) == 1:
                return encoding.ids[0]
        raise ValueError(f"the tokenizer cannot write {rest!r} one token at a time")

    def _tree(self, field_name: str, values, first_is_note: bool = False) -> dict:
        """Token prefix tree: value-token prefix -> (allowed next ids, whether a whole value ends here).

        Built from ``encode(field_name + " " + value)`` so the space merges as it does in real text; values
        whose encoding does not start with the tokens of ``field_name`` are dropped, as the official does.
        """
        name_ids = self._ids(field_name)
        texts = [f"{field_name} {value}" for value in values]
        tree: dict[tuple, set] = {}  # Python sets: same insertion order => same order as the official
        for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False):
            if encoding.ids[:len(name_ids)] != name_ids or len(encoding.ids) == len(name_ids):
                continue
            value_ids = encoding.ids[len(name_ids):]
            if first_is_note and self._decode(value_ids[0]).lstrip()[:1].upper() not in "ABCDEFG":
                continue
            for i in range(len(value_ids) + 1):
                tree.setdefault(tuple(value_ids[:i]), set()).add(
                    value_ids[i] if i < len(value_ids) else self.newline_id)
        return {prefix: (torch.tensor(list(nxt)), self.newline_id in nxt) for prefix, nxt in tree.items()}

    def set_max_duration(self, max_duration: int) -> None:
        """Largest duration (s) the LM may write; the official handler passes its GPU tier's limit."""
        if not isinstance(max_duration, int) or max_duration < DURATION_MIN:
            raise ValueError(f"max_duration must be an int >= {DURATION_MIN}, got {max_duration!r}")
        self.max_duration = max_duration
        self._trees["duration"] = self._tree("duration:", [str(v) for v in range(DURATION_MIN, max_duration + 1)])

    # ---- per-generation settings ----------------------------------------------------------------
    def configure(self, *, phase: str, user_metadata: dict | None = None, stop_at_reasoning: bool = False,
                  skip_caption: bool = False, skip_language: bool = False, skip_genres: bool = True,
                  target_duration: float | None = None) -> None:
        """Set up one generation and reset the state to THINK_TAG.

        phase: "cot" (metadata; continues to codes after ``</think>`` unless stop_at_reasoning), "codes"
        (jumps to codes when the prompt already holds ``</think>``), "understand" (metadata, then free text
        without audio codes). user_metadata: field -> value to inject (None = generate); values are written
        as ``str(value)``, see ``check_user_metadata`` to validate them first. target_duration (s): fixes the
        number of codes (int(5 * s)) and a generated duration value.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        unknown = sorted(set(user_metadata or {}) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown user_metadata field(s) {unknown}; expected {', '.join(_FIELDS)}")
        if target_duration is not None and target_duration < 0:
            raise ValueError(f"target_duration must be None or >= 0 seconds, got {target_duration!r}")
        self._phase, self._stop_at_reasoning = phase, stop_at_reasoning
        self._user = {field: (user_metadata or {}).get(field) for field in _FIELDS}
        self._skip = {"caption": skip_caption, "language": skip_language, "genres": skip_genres}
        self._target_duration = target_duration
        self._target_codes = int(target_duration * 5) if target_duration is not None and target_duration > 0 else None
        self._next = {THINK_TAG: NEWLINE_AFTER_THINK, NEWLINE_AFTER_THINK: _NAME["bpm"],
                      THINK_END_TAG: CODES_GENERATION, CODES_GENERATION: COMPLETED}
        for field in _FIELDS:
            if not self._skip.get(field, False):
                self._next[_NAME[field]] = _VALUE[field]
                self._next[_VALUE[field]] = self._field_after(field)
        self._state, self._codes_count = THINK_TAG, 0
        self._queue, self._user_field = [], None  # tokens of a user value still to inject, and its field
        self._reset_field()

    def _reset_field(self) -> None:
        self._position, self._acc_text, self._acc_ids = 0, "", []
        self._caption_after_newline, self._caption_tokens = False, 0
        self._caption_ending, self._pending_name = False, ""

    def _field_after(self, field: str) -> str:
        for later in _FIELDS[_FIELDS.index(field) + 1:]:
            if not self._skip.get(later, False):
                return _NAME[later]
        return THINK_END_TAG

    # ---- public state ---------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def code_ids_and_eos(self) -> torch.Tensor:
        """Bool [vocab_size]: the codes-phase allowed set (64000 code ids + EOS), for CFG on those ids only.
        A copy: cache it (and its nonzero ids) on the model's device rather than calling this per step."""
        return self._codes_and_eos.clone()

    @property
    def codes_count(self) -> int:
        return self._codes_count

    @property
    def target_codes(self) -> int | None:
        return self._target_codes

    # ---- masking --------------------------------------------------------------------------------
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.dim() != 2 or scores.shape[0] != 1 or scores.shape[1] != self.vocab_size:
            raise ValueError(f"scores must be [1, {self.vocab_size}], got {list(scores.shape)}")
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"input_ids must be [1, n], got {list(input_ids.shape)}")
        allowed = self._allowed(input_ids, scores)
        allowed = self._is_token if allowed is None else allowed
        if allowed.dtype == torch.bool:  # one of the constant masks, its complement cached per device
            key = (id(allowed), scores.device)
            if key not in self._blocked_on:
                self._blocked_on[key] = ~allowed.to(scores.device)
            return scores.masked_fill(self._blocked_on[key], float("-inf"))
        ids = allowed.to(scores.device)
        out = torch.full_like(scores, float("-inf"))
        out[:, ids] = scores[:, ids]
        return out

    def _allowed(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor | None:
        """This step's allowed set, in the official order of checks: a constant bool [vocab_size] mask,
        an int64 whitelist of ids, or None (no constraint)."""
        if self._state == COMPLETED:
            return self._no_codes if self._phase == "understand" else None
        if self._phase == "codes" and self._state == THINK_TAG and self._contains_think_end(input_ids):
            self._state, self._codes_count = CODES_GENERATION, 0
        if self._state == CODES_GENERATION:
            if self._target_codes is None:
                return self._codes_and_eos
            return self._codes_only if self._codes_count < self._target_codes else self._only(self.eos_id)
        if self._queue:
            return self._only(self._queue[0])
        if self._state in self._fixed:
            if self._state == THINK_END_TAG and self._stop_at_reasoning:
                return self._only(self.eos_id)
            return self._only(self._fixed[self._state][self._position])
        field = next((f for f, value_state in _VALUE.items() if value_state == self._state), None)
        if field is None:
            return None
        value = self._user[field]
        started = self._acc_text if field in ("caption", "genres") else self._acc_ids
        if value is not None and not started:
            self._queue, self._user_field = self._ids(f" {value}\n"), field
            return self._only(self._queue[0])
        return getattr(self, f"_{field}_step")(scores)

    def _contains_think_end(self, input_ids: torch.Tensor) -> bool:
        seq, pattern = input_ids[0].cpu(), self._think_end_ids
        if seq.numel() < pattern.numel():
            return False
        return bool((seq.unfold(0, pattern.numel(), 1) == pattern).all(dim=1).any())  # windows [n-k+1, k]

    def _bpm_step(self, scores):
        node = self._trees["bpm"].get(tuple(self._acc_ids))
        return self._only(node[0] if node else [])  # newline is in the set once a value is whole

    def _duration_step(self, scores):
        if self._target_duration is None:
            node = self._trees["duration"].get(tuple(self._acc_ids))
            return self._only(node[0] if node else [])
        digits, pos = str(int(self._target_duration)), len(self._acc_text)
        return self._only(self._digit_ids[int(digits[pos])] if pos < len(digits) else self.newline_id)

    def _timesignature_step(self, scores):
        node = self._trees["timesignature"].get(tuple(self._acc_ids))
        if node and node[1]:
            return self._only(self.newline_id)
        return self._only(node[0] if node else [])

    def _keyscale_step(self, scores):
        node = self._trees["keyscale"].get(tuple(self._acc_ids))
        return self._only(node[0] if node and not node[1] else self.newline_id)

    def _language_step(self, scores):
        node = self._trees["language"].get(tuple(self._acc_ids))
        if self._acc_ids or node is None:
            return self._only(node[0] if node and not node[1] else self.newline_id)
        candidates = node[0]  # first tokens of all languages, in the official candidate order
        best = int(torch.argmax(scores[0, candidates.to(scores.device)]))
        return self._only(candidates[best])

    def _caption_step(self, scores):
        if self._caption_after_newline:
            self._caption_after_newline = False
            top_text = self._decode(int(torch.argmax(scores[0])))
            if top_text and top_text[0] not in " \t":  # an unindented line: the next field's name
                self._caption_ending, self._pending_name = True, ""
        if self._caption_ending:
            return None
        if self._caption_tokens >= CAPTION_MAX_TOKENS:
            return self._only(self.newline_id)
        return self._caption_ok

    def _genres_step(self, scores):
        if not self._acc_text.strip():
            return self._no_newline
        probs = torch.softmax(scores[0], dim=-1)
        others = probs.clone()
        others[self.newline_id] = 0
        if probs[self.newline_id] > others.max():
            self._transition()  # the official moves on here, before the newline is even sampled
            return self._only(self.newline_id)
        return None

    # ---- state update ---------------------------------------------------------------------------
    def update_state(self, token_id: int) -> None:
        """Advance the machine with the token that was sampled after the last call."""
        token_id = int(token_id)
        if self._state == COMPLETED:
            return
        if self._state == CODES_GENERATION:
            self._codes_count += 1
            return
        if self._queue:
            self._queue.pop(0)  # the official does not check that the injected token was taken
            if not self._queue:
                self._state = self._field_after(self._user_field)
                self._user_field = None
                self._position, self._acc_text, self._acc_ids = 0, "", []
            return
        text = self._decode(token_id)
        state = self._state
        if state in self._fixed:
            self._position += len(text)
            if self._position >= len(_FIXED_TEXT[state]):
                if state == THINK_END_TAG and self._stop_at_reasoning:
                    self._state = COMPLETED
                    self._position, self._acc_text, self._acc_ids = 0, "", []
                else:
                    self._transition()
        elif state == _VALUE["caption"]:
            self._caption_token(text)
        elif state in _VALUE.values():  # the other value states end at a newline
            if token_id == self.newline_id:
                self._transition()
            elif state == _VALUE["genres"]:
                self._acc_text += text  # genres work on text, the others on token ids
            else:
                self._acc_ids.append(token_id)
                if state in _NUMERIC and text.strip().isdigit():
                    self._acc_text += text.strip()  # the digits written so far (target_duration forcing)

    def _caption_token(self, text: str) -> None:
        self._caption_tokens += 1
        self._acc_text += text
        self._caption_after_newline = "\n" in text
        if not self._caption_ending:
            return
        self._pending_name += text
        if ":" not in text:
            return
        name = self._pending_name.strip().rstrip(":").strip().lower()
        if name in _NAMED_AFTER_CAPTION:
            self._state = _VALUE[name]
            self._position, self._acc_text, self._acc_ids = 0, "", []
            self._caption_ending, self._pending_name = False, ""
        else:
            self._caption_ending, self._pending_name = False, ""
            self._transition()

    def _transition(self) -> None:
        """Move to the official next state; a state without an entry (skipped field) stays put."""
        nxt = self._next.get(self._state)
        if nxt is None:
            return
        if self._state == THINK_END_TAG and self._phase == "understand":
            nxt = COMPLETED
        self._state = nxt
        self._reset_field()
