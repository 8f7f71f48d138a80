"""The planner's constrained decoder against the official state machine.

Fixture walks (tests/fixtures/official_tiny_lm/reference/fsm*): recorded from the official
MetadataConstrainedLogitsProcessor; every step's allowed mask, chosen token and state names must match.
The other tests pin rules the walks do not reach; their expectations are read off the official code
(acestep/constrained_logits_processor.py), quirks included.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import AddedToken, Tokenizer

from acestep_core.lm.constrained import (
    BPM_MAX, BPM_MIN, DURATION_MIN, KEYSCALES, LANGUAGES, TIMESIGNATURES, MetadataConstraint, check_user_metadata,
)

FIX = Path(__file__).parent / "fixtures" / "official_tiny_lm"
TOKENIZER = FIX / "checkpoints" / "acestep-5Hz-lm-tiny" / "tokenizer.json"
V = 64554
EOS, NL, THINK_END, CODE0 = 551, 198, 553, 554


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thousands of tiny vocab-wide ops: thread hand-offs, not arithmetic, dominate on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(str(TOKENIZER))


@pytest.fixture(scope="module")
def fsm(tok):
    return MetadataConstraint(tok, V)


@pytest.fixture(scope="module")
def fsm_wide(tok):
    """A model head wider than the tokenizer, like the real 1.7B (217204 rows, tokens end at 215668)."""
    return MetadataConstraint(tok, V + 1000)


@pytest.fixture(scope="module")
def fsm_240(tok):
    return MetadataConstraint(tok, V, max_duration=240)


@pytest.fixture(scope="module")
def prompts():
    return json.loads((FIX / "reference" / "prompts.json").read_text())["prompt_token_ids"]


def ids_of(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def walk(c, tok, prompt, target="", max_steps=300, until=None):
    """Drive ``c`` like the fixture walks: the token that continues ``target`` scores 10, all others 0;
    the chosen token is the argmax of the output. Returns (generated text, [(state before, allowed, chosen)])."""
    ids, text, steps = list(prompt), "", []
    for _ in range(max_steps):
        if until is not None and until(c):
            break
        scores = torch.zeros(1, c.vocab_size)
        if target.startswith(text) and len(text) < len(target):
            scores[0, ids_of(tok, target[len(text):])[0]] = 10.0
        before = c.state
        out = c(torch.tensor([ids]), scores)
        chosen = int(out[0].argmax())
        steps.append((before, torch.isfinite(out[0]), chosen))
        c.update_state(chosen)
        ids.append(chosen)
        text += tok.decode([chosen], skip_special_tokens=False)
        if chosen == EOS:
            break
    return text, steps


def allowed_ids(mask):
    return set(mask.nonzero().flatten().tolist())


# ---- official fixture walks -------------------------------------------------------------------------------
def unpack(packed):
    bits = np.unpackbits(packed.numpy(), axis=-1, bitorder="little")[..., :V]  # token i = bit i % 8 of byte i // 8
    return torch.from_numpy(bits.astype(bool))


@pytest.mark.parametrize("name", ["cot_walk", "codes_walk"])
@pytest.mark.parametrize("which", ["fsm", "fsm_wide"])
def test_fixture_walks_match_official(request, prompts, name, which):
    ref = load_file(FIX / "reference" / "fsm.safetensors")
    spec = json.loads((FIX / "reference" / "fsm_walks.json").read_text())[name]
    s = spec["settings"]
    c = request.getfixturevalue(which)
    pad = c.vocab_size - V
    c.configure(phase=s["generation_phase"], user_metadata=spec.get("user_metadata"),
                stop_at_reasoning=s["stop_at_reasoning"], skip_genres=s.get("skip_genres", True),
                skip_caption=s.get("skip_caption", False), skip_language=s.get("skip_language", False),
                target_duration=s["target_duration"])
    masks, ids = unpack(ref[f"{name}_allowed_packed"]), list(prompts[spec["prompt"]])
    for k, step in enumerate(spec["steps"]):
        scores = torch.zeros(1, V + pad)
        scores[0, ref[f"{name}_logit_idx"][k]] = ref[f"{name}_logit_val"][k]
        assert c.state == step["state_before"], k
        out = c(torch.tensor([ids]), scores)
        allowed = torch.isfinite(out[0])
        assert torch.equal(allowed[:V], masks[k]), k
        assert not allowed[V:].any()
        chosen = int(out[0].argmax())
        assert chosen == step["chosen"] == int(ref[f"{name}_chosen"][k])
        c.update_state(chosen)
        ids.append(chosen)
        assert c.state == step["state_after"], k
    if name == "codes_walk":
        assert c.codes_count == s["target_codes"] + 1  # the official counts the EOS update too


def test_codes_phase_allowed_set(fsm):
    ref = load_file(FIX / "reference" / "fsm.safetensors")
    assert torch.equal(fsm.code_ids_and_eos, unpack(ref["codes_phase_allowed_packed"])[0])
    assert fsm.audio_code_offset == CODE0 and fsm.eos_id == EOS and fsm.code_ids_and_eos.sum() == 64001


def test_call_leaves_its_input_alone(fsm, prompts):
    fsm.configure(phase="cot")
    scores = torch.randn(1, V)
    before = scores.clone()
    out = fsm(torch.tensor([prompts["phase1_cot_cond"]]), scores)
    assert torch.equal(scores, before) and torch.isfinite(out).sum() == 1


# ---- rules the fixture walks do not reach -----------------------------------------------------------------
def test_user_values_of_every_field_are_injected(fsm, tok, prompts):
    user = {"bpm": 95, "caption": "a calm piano song", "duration": 45, "genres": "pop", "keyscale": "F# minor",
            "language": "ja", "timesignature": "3"}
    fsm.configure(phase="cot", user_metadata=user, stop_at_reasoning=True, skip_genres=False)
    text, steps = walk(fsm, tok, prompts["phase1_cot_cond"])  # no guide: every token is forced
    assert text == ("<think>\nbpm: 95\ncaption: a calm piano song\nduration: 45\ngenres: pop\nkeyscale: F# minor\n"
                    "language: ja\ntimesignature: 3\n<|im_end|>")
    assert all(int(mask.sum()) == 1 for _, mask, _ in steps)
    for field, value in user.items():
        value_state = {"timesignature": "TIMESIG"}.get(field, field.upper()) + "_VALUE"
        assert [chosen for state, _, chosen in steps if state == value_state] == ids_of(tok, f" {value}\n")


def test_user_duration_and_language_with_generated_rest(fsm, tok, prompts):
    fsm.configure(phase="cot", user_metadata={"duration": 200, "language": "zh"}, stop_at_reasoning=True,
                  skip_caption=True)
    text, _ = walk(fsm, tok, prompts["phase1_cot_cond"],
                   "<think>\nbpm: 88\nduration: 200\nkeyscale: A minor\nlanguage: zh\ntimesignature: 6\n")
    assert text == "<think>\nbpm: 88\nduration: 200\nkeyscale: A minor\nlanguage: zh\ntimesignature: 6\n<|im_end|>"


def _numeric_allowed(c, tok, prompt, value_state, digits):
    """Allowed ids once ``value_state`` has been given a space and ``digits``."""
    walk(c, tok, prompt, until=lambda m: m.state == value_state)
    walk(c, tok, prompt, " " + digits, max_steps=1 + len(digits))
    assert c.state == value_state
    out = c(torch.tensor([prompt]), torch.zeros(1, c.vocab_size))
    return allowed_ids(torch.isfinite(out[0]))


def _expected_numeric(tok, values, digits):
    """Digits that keep ``digits`` a prefix of some valid value; newline once it is a valid value."""
    texts = [str(v) for v in values]
    nxt = {t[len(digits)] for t in texts if t.startswith(digits) and len(t) > len(digits)}
    return {ids_of(tok, d)[-1] for d in nxt} | ({NL} if digits in texts else set())


@pytest.mark.parametrize("digits", ["", "2", "29", "3", "30", "31", "300", "1", "12", "120"])
def test_generated_bpm_follows_the_prefix_tree(fsm, tok, prompts, digits):
    fsm.configure(phase="cot")
    got = _numeric_allowed(fsm, tok, prompts["phase1_cot_cond"], "BPM_VALUE", digits)
    assert got == _expected_numeric(tok, range(BPM_MIN, BPM_MAX + 1), digits)


@pytest.mark.parametrize("digits", ["", "2", "24", "240", "9", "1", "10"])
def test_generated_duration_respects_max_duration(fsm_240, tok, prompts, digits):
    c = fsm_240
    c.configure(phase="cot", skip_caption=True, user_metadata={"bpm": 100})
    got = _numeric_allowed(c, tok, prompts["phase1_cot_cond"], "DURATION_VALUE", digits)
    assert got == _expected_numeric(tok, range(DURATION_MIN, 241), digits)


@pytest.mark.parametrize("digits", ["", "4"])
def test_generated_timesignature(fsm, tok, prompts, digits):
    fsm.configure(phase="cot", skip_caption=True, skip_language=True,
                  user_metadata={"bpm": 100, "duration": 30, "keyscale": "C major"})
    got = _numeric_allowed(fsm, tok, prompts["phase1_cot_cond"], "TIMESIG_VALUE", digits)
    assert got == ({NL} if digits else {ids_of(tok, str(t))[-1] for t in TIMESIGNATURES})


def feed(c, tokens):
    """Offer ``tokens`` one by one (each scoring 10); every one must be allowed and taken."""
    for token in tokens:
        scores = torch.zeros(1, c.vocab_size)
        scores[0, token] = 10.0
        assert int(c(torch.tensor([[0]]), scores)[0].argmax()) == token
        c.update_state(token)


def test_every_keyscale_and_nothing_else_can_be_generated(fsm, tok, prompts):
    lead = "<think>\nbpm: 100\nduration: 30\nkeyscale:"
    for keyscale in KEYSCALES:  # the value tokens as they appear in real text (byte tokens for the Unicode signs)
        fsm.configure(phase="cot", skip_caption=True, user_metadata={"bpm": 100, "duration": 30})
        walk(fsm, tok, prompts["phase1_cot_cond"], until=lambda m: m.state == "KEYSCALE_VALUE")
        feed(fsm, ids_of(tok, f"keyscale: {keyscale}")[len(ids_of(tok, "keyscale:")):])
        out = fsm(torch.tensor([[0]]), torch.zeros(1, V))
        assert allowed_ids(torch.isfinite(out[0])) == {NL}  # a whole keyscale allows only the newline
        fsm.update_state(NL)
        assert fsm.state == "LANGUAGE_NAME"
    fsm.configure(phase="cot", skip_caption=True, user_metadata={"bpm": 100, "duration": 30})
    walk(fsm, tok, prompts["phase1_cot_cond"], lead, until=lambda m: m.state == "KEYSCALE_VALUE")
    first = allowed_ids(torch.isfinite(fsm(torch.tensor([[0]]), torch.zeros(1, V))[0]))
    assert first == {ids_of(tok, f"keyscale: {k}")[len(ids_of(tok, "keyscale:"))] for k in KEYSCALES}
    space = ids_of(tok, " ")[0]  # this small BPE has no " A"/" H" tokens: those notes start with a bare space
    feed(fsm, [space])
    after_space = allowed_ids(torch.isfinite(fsm(torch.tensor([[0]]), torch.zeros(1, V))[0]))
    assert ids_of(tok, "A")[0] in after_space and ids_of(tok, "H")[0] not in after_space


def test_language_allows_only_the_best_first_token(fsm, tok, prompts):
    lead_ids = ids_of(tok, "language:")
    firsts = sorted({ids_of(tok, f"language: {lang}")[len(lead_ids)] for lang in LANGUAGES})
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        fsm.configure(phase="cot", skip_caption=True,
                      user_metadata={"bpm": 100, "duration": 30, "keyscale": "C major"})
        walk(fsm, tok, prompts["phase1_cot_cond"], "", until=lambda m: m.state == "LANGUAGE_VALUE")
        scores = torch.randn(1, V, generator=gen)
        scores[0, 0] = 100.0  # the overall best token is not a language: ignored
        out = fsm(torch.tensor([[0]]), scores)
        assert allowed_ids(torch.isfinite(out[0])) == {firsts[int(scores[0, firsts].argmax())]}


def test_without_stop_at_reasoning_think_end_leads_to_codes(fsm, tok, prompts):
    fsm.configure(phase="cot", skip_caption=True, skip_language=True,
                  user_metadata={"bpm": 100, "duration": 30, "keyscale": "C major", "timesignature": 4})
    target = ("<think>\nbpm: 100\nduration: 30\nkeyscale: C major\ntimesignature: 4\n</think>"
              "<|audio_code_7|><|audio_code_63999|><|im_end|>")
    text, steps = walk(fsm, tok, prompts["phase1_cot_cond"], target)
    assert text == target
    states = [s for s, _, _ in steps]
    k = states.index("THINK_END_TAG")
    assert allowed_ids(steps[k][1]) == {THINK_END}
    assert all(s == "CODES_GENERATION" and torch.equal(m, fsm.code_ids_and_eos) for s, m, _ in steps[k + 1:])


def test_understand_phase_writes_free_text_without_codes_after_think(fsm, tok, prompts):
    fsm.configure(phase="understand", skip_genres=True,
                  user_metadata={"bpm": 100, "caption": "x", "duration": 30, "keyscale": "C major", "language": "en",
                                 "timesignature": 4})
    text, _ = walk(fsm, tok, prompts["phase1_cot_cond"], until=lambda m: m.state == "COMPLETED")
    assert text.endswith("timesignature: 4\n</think>")
    out = fsm(torch.tensor([[0]]), torch.zeros(1, V))
    assert torch.equal(torch.isfinite(out[0]), torch.arange(V) < CODE0)


@pytest.mark.parametrize("seconds, n_codes", [(1.0, 5), (3.7, 18), (0, None), (None, None)])
def test_codes_phase_target_counts(fsm, tok, prompts, seconds, n_codes):
    fsm.configure(phase="codes", target_duration=seconds)
    _, steps = walk(fsm, tok, prompts["phase2_codes_cond"], "<|im_end|>", max_steps=30)  # wants EOS at once
    chosen = [ch for _, _, ch in steps]
    if n_codes is None:
        assert chosen == [EOS] and torch.equal(steps[0][1], fsm.code_ids_and_eos)
    else:
        assert len(chosen) == n_codes + 1 and chosen[-1] == EOS and all(ch >= CODE0 for ch in chosen[:-1])
        assert all(not m[EOS] and int(m.sum()) == 64000 for _, m, _ in steps[:-1])
        assert allowed_ids(steps[-1][1]) == {EOS}


def test_codes_phase_without_think_end_in_prompt_writes_the_cot_first(fsm, tok, prompts):
    fsm.configure(phase="codes", target_duration=30.9, skip_caption=True, skip_language=True,
                  user_metadata={"bpm": 100})
    text, _ = walk(fsm, tok, prompts["phase1_cot_cond"], "<think>\nbpm: 100\nduration: 77\n", max_steps=25)
    assert text.startswith("<think>\nbpm: 100\nduration:30\nkeyscale:")  # target_duration digits, no space


def test_skip_caption_goes_from_bpm_to_duration(fsm, tok, prompts):
    fsm.configure(phase="cot", skip_caption=True)
    text, _ = walk(fsm, tok, prompts["phase1_cot_cond"], "<think>\nbpm: 120\ncaption: x",
                   until=lambda m: m.state == "DURATION_VALUE")
    assert text == "<think>\nbpm: 120\nduration:"


def test_caption_newline_rule(fsm, tok, prompts):
    fsm.configure(phase="cot", stop_at_reasoning=True)
    target = "<think>\nbpm: 120\ncaption: a calm\n  piano song\nkeyscale: D minor\nlanguage: en\ntimesignature: 3\n"
    text, steps = walk(fsm, tok, prompts["phase1_cot_cond"], target)
    assert text == target + "<|im_end|>"  # duration was never written: the LM named keyscale itself
    caption = [(int(m.sum()), ch) for s, m, ch in steps if s == "CAPTION_VALUE"]
    texts = [tok.decode([ch]) for _, ch in caption]
    first_nl, second_nl = [i for i, t in enumerate(texts) if "\n" in t]
    assert caption[first_nl + 1][0] == 553  # indented continuation: still caption rules
    assert all(n == V for n, _ in caption[second_nl + 1:])  # unindented line: free until ':'


def test_unknown_name_after_caption_moves_to_the_next_field(fsm, tok, prompts):
    fsm.configure(phase="cot")
    text, _ = walk(fsm, tok, prompts["phase1_cot_cond"], "<think>\nbpm: 120\ncaption: calm\nfoo:",
                   until=lambda m: m.state == "DURATION_VALUE")
    assert text == "<think>\nbpm: 120\ncaption: calm\nfoo:duration:"


def test_skipped_field_named_after_caption_never_ends(fsm, tok, prompts):
    fsm.configure(phase="cot", skip_language=True)  # official: LANGUAGE_VALUE has no next state then
    text, steps = walk(fsm, tok, prompts["phase1_cot_cond"], "<think>\nbpm: 120\ncaption: calm\nlanguage: en\n",
                       max_steps=40)
    assert text.rstrip("\n").endswith("calm\nlanguage: en") and text.endswith("\n" * 10)
    assert fsm.state == "LANGUAGE_VALUE" and all(s == fsm.state and allowed_ids(m) == {NL} for s, m, _ in steps[-5:])


def test_genres_without_vocabulary(fsm, tok, prompts):
    fsm.configure(phase="cot", skip_genres=False, skip_caption=True, user_metadata={"bpm": 100, "duration": 30})
    text, steps = walk(fsm, tok, prompts["phase1_cot_cond"], "<think>\nbpm: 100\nduration: 30\ngenres: pop\nkey",
                       until=lambda m: m.state == "KEYSCALE_VALUE")
    genres = [(m, ch) for s, m, ch in steps if s == "GENRES_VALUE"]
    assert genres[0][1] != NL and not genres[0][0][NL] and int(genres[0][0].sum()) == V - 1  # blank: no newline
    assert allowed_ids(genres[-1][0]) == {NL}
    # the official already moved to KEYSCALE_NAME inside the call, so the newline counts as its "k"
    assert text == "<think>\nbpm: 100\nduration: 30\ngenres: pop\neyscale:"


def test_caption_is_cut_at_512_tokens(fsm, tok, prompts):
    fsm.configure(phase="cot", user_metadata={"bpm": 100})
    walk(fsm, tok, prompts["phase1_cot_cond"], until=lambda m: m.state == "CAPTION_VALUE")
    text, steps = walk(fsm, tok, prompts["phase1_cot_cond"], " a" * 600, max_steps=513)
    assert text == " a" * 512 + "\n"
    assert allowed_ids(steps[-1][1]) == {NL} and int(steps[-2][1].sum()) == 553


def test_bad_arguments(fsm, tok):
    with pytest.raises(ValueError, match="phase"):
        fsm.configure(phase="lyrics")
    with pytest.raises(ValueError, match="tempo"):
        fsm.configure(phase="cot", user_metadata={"tempo": 120})
    with pytest.raises(ValueError, match="target_duration"):
        fsm.configure(phase="codes", target_duration=-1)
    with pytest.raises(ValueError, match="scores"):
        fsm(torch.zeros(1, 3, dtype=torch.long), torch.zeros(2, V))
    with pytest.raises(ValueError, match="vocab_size"):
        MetadataConstraint(tok, V - 1)
    with pytest.raises(ValueError, match="max_duration"):
        fsm.set_max_duration(5)


def test_check_user_metadata():
    ok = {"bpm": 120, "duration": 30, "keyscale": "B\u266d major", "language": "yue", "timesignature": "6/8",
          "caption": "calm", "genres": None}
    assert check_user_metadata(ok, 600) == {k: v for k, v in ok.items() if v is not None}
    assert check_user_metadata(None, 600) == {}
    assert len(KEYSCALES) == 70 and len(LANGUAGES) == 51
    for bad, word in [({"language": "english"}, "language"), ({"keyscale": "H major"}, "keyscale"),
                      ({"bpm": 301}, "bpm"), ({"bpm": "fast"}, "bpm"), ({"duration": 241}, "duration"),
                      ({"duration": 9}, "duration"), ({"timesignature": 5}, "timesignature"),
                      ({"mood": "sad"}, "mood"), ({"caption": 3}, "caption")]:
        with pytest.raises(ValueError, match=word):
            check_user_metadata(bad, 240)


# ---- real vocabulary size ---------------------------------------------------------------------------------
class CountingTokenizer:
    """Forwards to a tokenizers.Tokenizer and counts encode/decode calls (loops over the vocab would show)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in ("encode", "decode", "encode_batch"):
            def counted(*args, **kwargs):
                self.calls += 1
                return attr(*args, **kwargs)
            return counted
        return attr


def test_real_size_vocabulary_is_classified_without_per_token_loops(tok, prompts):
    spec = json.loads(TOKENIZER.read_text())
    spec["added_tokens"] = spec["added_tokens"][:5]  # keep the specials, rebuild the real 1.7B id layout
    big = Tokenizer.from_str(json.dumps(spec))
    big.add_tokens([AddedToken(f"<|filler_{i}|>", normalized=False) for i in range(554, 151669)])
    big.add_tokens([AddedToken(f"<|audio_code_{i}|>", normalized=False) for i in range(64000)])
    counting = CountingTokenizer(big)
    c = MetadataConstraint(counting, 217204)
    assert counting.calls < 500  # the fixed strings and value trees only, never once per token
    assert c.audio_code_offset == 151669 and c.code_ids_and_eos.sum() == 64001
    assert c.code_ids_and_eos[151669:215669].all() and not c.code_ids_and_eos[215669:].any()
    c.configure(phase="cot", stop_at_reasoning=True)
    counting.calls = 0
    text, steps = walk(c, big, prompts["phase1_cot_cond"], "<think>\nbpm: 120\ncaption: calm\n  x\nduration: 30\n")
    assert text.startswith("<think>\nbpm: 120\ncaption: calm\n  x\nduration: 30\nkeyscale:")
    assert counting.calls <= 3 * len(steps)
    caption = [m for s, m, _ in steps if s == "CAPTION_VALUE"]
    assert int(caption[0].sum()) == 151669 - 1  # text + specials + fillers, minus the backtick; no padding
