"""Planner text side vs the official fixture: tokenizer ids, chat prompts, YAML CoT, the output parser."""

import json
from pathlib import Path

import pytest
import torch

from acestep_core.lm import cot, prompts
from acestep_core.lm.tokenizer import LMTokenizer, code_values, parse_code_list, parse_code_string

FIX = Path(__file__).parent / "fixtures" / "official_tiny_lm"
REF = json.loads((FIX / "reference" / "prompts.json").read_text())


@pytest.fixture(scope="module")
def tok():
    return LMTokenizer.from_file(FIX / "checkpoints" / "acestep-5Hz-lm-tiny" / "tokenizer.json")


def test_special_ids(tok):
    assert (tok.eos_id, tok.pad_id, tok.code_offset, len(tok)) == (
        REF["eos_token_id"], REF["pad_token_id"], REF["special_token_ids"]["<|audio_code_0|>"], REF["vocab_size"])


def test_prompts_equal_the_official_builders():
    cap, lyr, p = REF["caption"], REF["lyrics"], REF["prompts"]
    assert prompts.cot_prompt(cap, lyr) == p["phase1_cot_cond"]
    assert prompts.cot_uncond_prompt(cap, lyr) == p["phase1_cot_uncond"]
    assert prompts.cot_uncond_prompt(cap, lyr, "noisy, lo-fi") == p["phase1_cot_uncond_with_negative"]
    assert prompts.codes_prompt(cap, lyr, REF["cot_text"]) == p["phase2_codes_cond"]
    assert prompts.codes_uncond_prompt() == p["phase2_codes_uncond"]
    assert prompts.codes_uncond_prompt("noisy, lo-fi") == p["phase2_codes_uncond_with_negative"]
    assert prompts.codes_uncond_legacy_prompt(cap, lyr) == p["phase2_codes_uncond_legacy"]
    assert prompts.codes_uncond_prompt("  ") == prompts.codes_uncond_prompt("NO USER INPUT") == p["phase2_codes_uncond"]


def test_prompt_token_ids_and_the_left_padded_pair(tok):
    for name, text in REF["prompts"].items():
        assert tok.encode(text) == REF["prompt_token_ids"][name], name
    ids, mask = tok.pad_left([REF["prompt_token_ids"]["phase2_codes_cond"],
                              REF["prompt_token_ids"]["phase2_codes_uncond"]])
    assert ids.tolist() == REF["cfg_pair_input_ids"] and mask.tolist() == REF["cfg_pair_attention_mask"]
    assert ids.dtype == mask.dtype == torch.long


def test_decode_keeps_special_tokens(tok):
    text = REF["prompts"]["phase2_codes_cond"]
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.code_offset + 5, tok.eos_id]) == "<|audio_code_5|><|im_end|>"


def test_cot_yaml_equals_the_official_one():
    assert cot.format_cot(REF["user_metadata"]) == REF["cot_text"]
    ex = REF["cot_format_example"]
    assert cot.format_cot(ex["metadata"]) == ex["cot_text"]  # wrapped at 80, "3/4" -> 3, "95" -> 95, no genres
    assert cot.format_cot({}) == "<think>\n\n</think>"
    assert cot.format_cot({"caption": "café", "bpm": None}) == "<think>\ncaption: café\n</think>"


def test_parse_lm_output_equals_the_official_parser():
    ex = REF["cot_format_example"]
    metadata, codes = cot.parse_lm_output(ex["cot_text"] + "\n\n<|audio_code_5|><|audio_code_63999|><|im_end|>")
    assert metadata == ex["parse_lm_output_metadata"] and codes == ex["parse_lm_output_codes"]
    assert list(metadata) == ["bpm", "caption", "duration", "keyscale", "language", "timesignature"]


def test_parser_quirks():
    # Phase 1 output: stopped before </think>, so the text before the first code is parsed; tag lines skipped.
    meta, codes = cot.parse_lm_output("<think>\nbpm: 120\ncaption: a\n  b\nduration: 3x\ngenres: pop\n"
                                      "KeyScale: C major\nnot a field\n\tlanguage: en\ntimesignature: 4<|im_end|>")
    assert meta == {"bpm": 120, "caption": "a b", "duration": "3x", "genres": "pop",
                    "keyscale": "C major\n\tlanguage: en", "timesignature": "4<|im_end|>"}
    assert codes == ""
    # An empty reasoning block falls back to the text before the codes; unknown keys are dropped.
    assert cot.parse_lm_output("<think>\n\n</think>\nfoo: 1\nbpm:\n<|audio_code_1|>") == ({}, "<|audio_code_1|>")


def test_extract_lyrics():
    text = "<think>\nbpm: 90\n</think>\n\n# Lyric\n[verse]\nhello\n<|im_end|>"
    assert cot.extract_lyrics(text) == "[verse]\nhello"
    assert cot.extract_lyrics("# Lyrics\nno think tag") == ""
    assert cot.extract_lyrics("<think>\n</think>\n#lyric\nla") == "la"
    # The official header pattern `Lyri[c|cs]?` takes one character, so a "# Lyrics" header stays.
    assert cot.extract_lyrics("<think>\n</think>\n# Lyrics\nla") == "# Lyrics\nla"


def test_code_strings():
    assert parse_code_string("<|audio_code_0|>x<|audio_code_63999|>") == [0, 63999]
    assert code_values("<|audio_code_7|><|audio_code_70000|>") == [7, 70000]
    with pytest.raises(ValueError, match="outside 0..63999"):
        parse_code_string("<|audio_code_64000|>")
    with pytest.raises(ValueError, match="no <|audio_code_N|>"):
        parse_code_string("hello")
    with pytest.raises(ValueError, match="outside"):
        parse_code_list([1, -1])
    with pytest.raises(TypeError, match="integers"):
        parse_code_list(torch.tensor([1.0]))
