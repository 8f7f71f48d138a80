"""The planner's chain of thought: metadata written as YAML between <think> tags, and the official parser.

Writing (`format_cot`) follows `LLMHandler._format_metadata_as_cot`: the six CoT fields that are set,
"3/4"-style time signatures cut to the beats ("3"), digit strings turned into ints, then PyYAML with sorted
keys and unicode kept. PyYAML wraps long strings at 80 columns with two-space continuation lines, which is
the layout the model was trained on, so it is used rather than a hand-written writer.

Reading (`parse_lm_output`) follows `LLMHandler.parse_lm_output` line by line, including its quirks: a
field starts at a non-indented line containing ":", indented lines continue it, tag lines ("<...") and
other lines are skipped; bpm/duration become ints when they parse, the caption's continuation lines are
joined with single spaces, time signatures stay strings. Audio codes are every <|audio_code_N|> token.
"""

from __future__ import annotations

import re

import yaml

COT_FIELDS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")
_CODE_TOKEN_RE = re.compile(r"<\|audio_code_\d+\|>")
_REASONING_RES = (re.compile(r"<think>(.*?)</think>", re.DOTALL),
                  re.compile(r"<reasoning>(.*?)</reasoning>", re.DOTALL))
_LYRIC_HEADER_RE = re.compile(r"^#\s*Lyri[cs|]?\s*\n", re.IGNORECASE)  # the official class [c|cs] is {c, |, s}
_TRAILING_EOS_RE = re.compile(r"<\|im_end\|>\s*$")


def format_cot(metadata: dict) -> str:
    """metadata -> "<think>\\n{yaml}\\n</think>" (genres and unknown keys are not written)."""
    items = {}
    for key in COT_FIELDS:
        value = metadata.get(key)
        if value is None:
            continue
        if key == "timesignature" and isinstance(value, str) and value.endswith("/4"):
            value = value.split("/")[0]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        items[key] = value
    body = yaml.safe_dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""
    return f"<think>\n{body}\n</think>"


def postprocess_caption(caption: str) -> str:
    """Undo YAML line wrapping: strip every line, drop blank ones, join with single spaces."""
    if not caption:
        return caption
    return " ".join(line.strip() for line in caption.split("\n") if line.strip())


def _field_value(key: str, lines: list[str]):
    value = "\n".join(lines)
    if key in ("bpm", "duration"):
        try:
            return int(value.strip())
        except ValueError:
            return value.strip()
    if key == "caption":
        return postprocess_caption(value)
    return value.strip()


_PARSED_FIELDS = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")


def parse_metadata(reasoning: str) -> dict:
    """The official YAML-ish line parser over the reasoning text (see the module docstring)."""
    metadata: dict = {}
    key, lines = None, []

    def flush():
        if key in _PARSED_FIELDS and lines:
            metadata[key] = _field_value(key, lines)

    for line in reasoning.split("\n"):
        if line.strip().startswith("<"):
            continue
        if line and not line[0].isspace() and ":" in line:
            flush()
            name, first = line.split(":", 1)
            key, lines = name.strip().lower(), []
            if first.strip():
                lines.append(first)
        elif line.startswith((" ", "\t")) and key:
            lines.append(line)
    flush()
    return metadata


def parse_lm_output(text: str) -> tuple[dict, str]:
    """LM output text -> (metadata, audio_codes string), as `LLMHandler.parse_lm_output`."""
    codes = "".join(_CODE_TOKEN_RE.findall(text))
    reasoning = None
    for pattern in _REASONING_RES:
        match = pattern.search(text)
        if match:
            reasoning = match.group(1).strip()
            break
    if not reasoning:
        # No (or empty) reasoning block: parse whatever precedes the first code token.
        reasoning = text.split("<|audio_code_")[0].strip()
    return (parse_metadata(reasoning) if reasoning else {}), codes


def extract_lyrics(text: str) -> str:
    """Everything after </think>, without a leading "# Lyric(s)" header or a trailing <|im_end|>."""
    match = re.search(r"</think>", text)
    if not match:
        return ""
    after = text[match.end():].strip()
    if not after:
        return ""
    after = _LYRIC_HEADER_RE.sub("", after)
    after = _TRAILING_EOS_RE.sub("", after)
    return after.strip()
