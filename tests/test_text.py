"""Prompt templates and the tokenizer wrapper against the official fixture strings, ids and masks."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep_core import prompts
from acestep_core.prompts import format_caption, format_lyrics, format_metas, task_instruction
from acestep_core.text import TextTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "official_tiny_turbo"
QWEN_DIR = FIXTURE / "checkpoints" / "Qwen3-Embedding-0.6B"
STRINGS = json.loads((FIXTURE / "reference" / "strings.json").read_text(encoding="utf-8"))
PAD = 609

TEXTS = [
    STRINGS["text2music_prompt"],
    STRINGS["text2music_lyrics_text"],
    "hello world",
    "  spaces\n\n\nand\ttabs  ",
    "啦啦啦 la la 123 <|im_start|>special<|im_end|> café",
    "<|endoftext|>",
]


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer(QWEN_DIR)


@pytest.fixture(scope="module")
def ref():
    return load_file(FIXTURE / "reference" / "text_encoder.safetensors")


def _with_eos_post_processor(tmp_path: Path) -> Path:
    """A copy of the fixture tokenizer whose tokenizer.json appends <|endoftext|> to every sequence, like the
    current upstream Qwen3-Embedding tokenizer does."""
    for f in QWEN_DIR.iterdir():
        if f.suffix in (".json", ".txt"):
            shutil.copy(f, tmp_path / f.name)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    eos = {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, eos],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}, eos],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [PAD], "tokens": ["<|endoftext|>"]}},
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


# --- prompt strings ----------------------------------------------------------------------------------------

def test_caption_prompt_matches_official_string():
    m = STRINGS["metas"]
    text = format_caption(STRINGS["caption"], task_instruction("text2music"), bpm=m["bpm"],
                          timesignature=m["timesignature"], keyscale=m["keyscale"], duration=m["duration"])
    assert text == STRINGS["text2music_prompt"]


def test_lyric_text_matches_official_string():
    assert format_lyrics(STRINGS["lyrics"], STRINGS["vocal_language"]) == STRINGS["text2music_lyrics_text"]


def test_metas_defaults_and_formatting():
    assert format_metas() == "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"
    assert format_metas(bpm="96", timesignature=3, keyscale="B♭ major", duration=6.9) == (
        "- bpm: 96\n- timesignature: 3\n- keyscale: B♭ major\n- duration: 6 seconds\n")
    assert format_metas(keyscale="F# minor", duration=0.5).endswith("- keyscale: F# minor\n- duration: 0 seconds\n")
    assert "- keyscale: C Major\n" in format_metas(keyscale="C Major")  # written as given


def test_instruction_gets_a_trailing_colon_and_caption_is_verbatim():
    with_colon = format_caption("a {b} c", "Do it:")
    assert with_colon == format_caption("a {b} c", "Do it")
    assert with_colon.startswith("# Instruction\nDo it:\n\n# Caption\na {b} c\n\n# Metas\n- bpm: N/A\n")
    assert with_colon.endswith("- duration: 30 seconds\n<|endoftext|>\n")


def test_task_instructions():
    assert task_instruction("text2music") == "Fill the audio semantic mask based on the given conditions:"
    assert task_instruction("repaint") == "Repaint the mask area based on the given conditions:"
    assert task_instruction("cover") == "Generate audio semantic tokens based on the given conditions:"
    assert task_instruction("cover-nofsq") == task_instruction("cover")
    assert task_instruction("extract") == "Extract the track from the audio:"
    assert task_instruction("extract", track_name="drums") == "Extract the DRUMS track from the audio:"
    assert task_instruction("lego") == "Generate the track based on the audio context:"
    assert task_instruction("lego", track_name="backing_vocals") == (
        "Generate the BACKING_VOCALS track based on the audio context:")
    assert task_instruction("complete") == "Complete the input track:"
    assert task_instruction("complete", complete_track_classes=[]) == "Complete the input track:"
    assert task_instruction("complete", complete_track_classes=["drums", "Bass"]) == (
        "Complete the input track with DRUMS | BASS:")
    assert set(prompts.TASKS) == {"text2music", "repaint", "cover", "cover-nofsq", "extract", "lego", "complete"}


@pytest.mark.parametrize("kwargs, argument", [
    (dict(bpm=0), "bpm"), (dict(bpm=-5), "bpm"), (dict(bpm=120.5), "bpm"), (dict(bpm="fast"), "bpm"),
    (dict(bpm=True), "bpm"), (dict(bpm=" 120"), "bpm"),
    (dict(timesignature="4/4"), "timesignature"), (dict(timesignature=5), "timesignature"),
    (dict(timesignature=4.0), "timesignature"),
    (dict(keyscale="H major"), "keyscale"), (dict(keyscale="Am"), "keyscale"), (dict(keyscale="C"), "keyscale"),
    (dict(keyscale=" C major"), "keyscale"), (dict(keyscale=1), "keyscale"),
    (dict(duration=0), "duration"), (dict(duration=-1), "duration"), (dict(duration=float("nan")), "duration"),
    (dict(duration="6"), "duration"), (dict(duration=True), "duration"),
])
def test_bad_metas(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        format_caption("x", "Do it", **kwargs)


def test_bad_prompt_arguments():
    with pytest.raises(ValueError, match="caption"):
        format_caption(None, "Do it")
    with pytest.raises(ValueError, match="instruction"):
        format_caption("x", "  ")
    with pytest.raises(ValueError, match="language"):
        format_lyrics("la", "english")
    with pytest.raises(ValueError, match="lyrics"):
        format_lyrics(["la"], "en")
    with pytest.raises(ValueError, match="task"):
        task_instruction("text-to-music")
    with pytest.raises(ValueError, match="track_name"):
        task_instruction("extract", track_name="drum")
    with pytest.raises(ValueError, match="track_name"):
        task_instruction("text2music", track_name="drums")
    with pytest.raises(ValueError, match="complete_track_classes"):
        task_instruction("complete", complete_track_classes=["drums", "kazoo"])
    with pytest.raises(ValueError, match="complete_track_classes"):
        task_instruction("complete", complete_track_classes="drums")
    with pytest.raises(ValueError, match="complete_track_classes"):
        task_instruction("lego", complete_track_classes=["drums"])


# --- tokenizer ---------------------------------------------------------------------------------------------

def test_ids_and_masks_match_official_fixture(tok, ref):
    ids, mask = tok.encode_captions([STRINGS["text2music_prompt"]])
    assert ids.dtype == mask.dtype == torch.int64
    assert torch.equal(ids, ref["text_token_ids"]) and torch.equal(mask, ref["text_attention_mask"])
    ids, mask = tok.encode_lyrics([STRINGS["text2music_lyrics_text"]])
    assert torch.equal(ids, ref["lyric_token_ids"]) and torch.equal(mask, ref["lyric_attention_mask"])
    assert tok.pad_token_id == PAD


def test_batch_is_right_padded_with_the_pad_id(tok):
    texts = [STRINGS["text2music_lyrics_text"], "hello world", STRINGS["text2music_prompt"]]
    ids, mask = tok.encode_lyrics(texts)
    alone = [tok.encode(t, 2048) for t in texts]
    assert ids.shape == mask.shape == (3, max(len(a) for a in alone))
    for i, a in enumerate(alone):
        assert ids[i, : len(a)].tolist() == a
        assert (ids[i, len(a):] == PAD).all()
        assert mask[i].tolist() == [1] * len(a) + [0] * (ids.shape[1] - len(a))


def test_truncation_keeps_the_first_tokens(tmp_path):
    full = TextTokenizer(QWEN_DIR).encode(STRINGS["text2music_prompt"], 10_000)
    short = TextTokenizer(QWEN_DIR, caption_max_tokens=20, lyric_max_tokens=7)
    ids, mask = short.encode_captions([STRINGS["text2music_prompt"], "hello"])
    assert ids.shape == (2, 20) and ids[0].tolist() == full[:20] and mask[0].all()
    assert short.encode_lyrics([STRINGS["text2music_lyrics_text"]])[0].shape == (1, 7)
    # With a post-processor the added token is kept and the text cut shorter to make room.
    pp = TextTokenizer(_with_eos_post_processor(tmp_path), caption_max_tokens=20)
    assert pp.encode_captions([STRINGS["text2music_prompt"]])[0][0].tolist() == full[:19] + [PAD]


@pytest.mark.parametrize("post_processor", [False, True])
def test_agrees_with_transformers_autotokenizer(tmp_path, post_processor):
    transformers = pytest.importorskip("transformers")
    folder = _with_eos_post_processor(tmp_path) if post_processor else QWEN_DIR
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ours = TextTokenizer(folder)
    assert ours.pad_token_id == hf.pad_token_id
    for text in TEXTS:
        for max_len in (256, 2048, 12):
            # The official call: one text, padding="longest", truncation=True, max_length, default special tokens.
            expected = hf(text, padding="longest", truncation=True, max_length=max_len).input_ids
            assert ours.encode(text, max_len) == expected, (text, max_len)
    if not post_processor:
        assert ours.encode("hello world", 256) == hf("hello world", add_special_tokens=False).input_ids


def test_tokenizer_errors(tmp_path, tok):
    with pytest.raises(ValueError, match="path"):
        TextTokenizer(tmp_path)
    with pytest.raises(ValueError, match="pad_token_id"):
        TextTokenizer(QWEN_DIR, pad_token_id=612)
    with pytest.raises(ValueError, match="pad_token_id"):
        TextTokenizer(QWEN_DIR, pad_token_id=-1)
    with pytest.raises(ValueError, match="caption_max_tokens"):
        TextTokenizer(QWEN_DIR, caption_max_tokens=0)
    with pytest.raises(ValueError, match="lyric_max_tokens"):
        TextTokenizer(_with_eos_post_processor(tmp_path), lyric_max_tokens=1)
    with pytest.raises(ValueError, match="texts"):
        tok.encode_captions("a single string")
    with pytest.raises(ValueError, match="texts"):
        tok.encode_captions([])
    with pytest.raises(ValueError, match="text"):
        tok.encode_lyrics(["ok", 3])
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        tok.encode_lyrics(["ok", ""])
    assert TextTokenizer(QWEN_DIR, pad_token_id=0).encode_lyrics(["hello world", "a"])[0][1, -1].item() == 0
    assert TextTokenizer(QWEN_DIR / "tokenizer.json").pad_token_id == PAD
