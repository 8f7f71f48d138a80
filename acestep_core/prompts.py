"""Prompt templates of ACE-Step 1.5, as data, and the three functions that fill them.

The model was trained on text in one exact layout, so every character here matters. Sources (official
repository): `acestep/constants.py` (SFT_GEN_PROMPT, TASK_INSTRUCTIONS, VALID_LANGUAGES, TRACK_NAMES,
VALID_KEYSCALES, VALID_TIME_SIGNATURES) and `acestep/core/generation/handler/` (`prompt_utils.py`,
`metadata_utils.py`, `task_utils.py`, `batch_prep.py`, `conditioning_text.py`).

Caption prompt, one per item:

    # Instruction
    {instruction, ending with ":"}

    # Caption
    {caption}

    # Metas
    - bpm: {bpm or N/A}
    - timesignature: {timesignature or N/A}
    - keyscale: {keyscale or N/A}
    - duration: {int(duration), default 30} seconds
    <|endoftext|>

Lyric text: "# Languages\\n{language}\\n\\n# Lyric\\n{lyrics}<|endoftext|>".

The official handler writes whatever value it is given; here values are checked first (ValueError naming
the argument), and every accepted value is written exactly as the official handler would write it.
"""

from __future__ import annotations

import math
import numbers
import re

# --- templates ---------------------------------------------------------------------------------------------

# Note the "\n" after <|endoftext|> in the caption prompt and its absence in the lyric text: both as official.
CAPTION_TEMPLATE = "# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{metas}<|endoftext|>\n"
LYRICS_TEMPLATE = "# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"
METAS_TEMPLATE = "- bpm: {bpm}\n- timesignature: {timesignature}\n- keyscale: {keyscale}\n- duration: {duration} seconds\n"
MISSING = "N/A"
DEFAULT_DURATION_SECONDS = 30  # written when no duration is known (official `_create_default_meta`)

# --- tasks -------------------------------------------------------------------------------------------------

DEFAULT_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"

# task -> (instruction without a track, instruction template with a track / track classes, or None).
TASK_INSTRUCTIONS: dict[str, tuple[str, str | None]] = {
    "text2music": (DEFAULT_INSTRUCTION, None),
    "repaint": ("Repaint the mask area based on the given conditions:", None),
    "cover": ("Generate audio semantic tokens based on the given conditions:", None),
    "cover-nofsq": ("Generate audio semantic tokens based on the given conditions:", None),
    "extract": ("Extract the track from the audio:", "Extract the {} track from the audio:"),
    "lego": ("Generate the track based on the audio context:", "Generate the {} track based on the audio context:"),
    "complete": ("Complete the input track:", "Complete the input track with {}:"),
}
TASKS = tuple(TASK_INSTRUCTIONS)
_TRACK_TASKS = ("extract", "lego")

TRACK_NAMES = (
    "woodwinds", "brass", "fx", "synth", "strings", "percussion",
    "keyboard", "guitar", "bass", "drums", "backing_vocals", "vocals",
)

# --- metadata vocabularies ---------------------------------------------------------------------------------

# "unknown" is what the official UI sends for instrumental / undetected language.
VOCAL_LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en",
    "es", "fa", "fi", "fr", "he", "hi", "hr", "ht", "hu", "id",
    "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no",
    "pa", "pl", "pt", "ro", "ru", "sa", "sk", "sr", "sv", "sw",
    "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh",
    "unknown",
)
# Beats per bar, written as a bare number ("4" means 4/4), as the official LM writes it.
TIME_SIGNATURES = ("2", "3", "4", "6")
# Note A-G, optional accidental (ASCII or Unicode sharp/flat), one space, major/minor: "C major", "F# minor",
# "B♭ major". The official vocabulary spells the mode in lower case; "C Major" is accepted and kept as written.
_KEYSCALE = re.compile(r"[A-G][#b♯♭]? (?i:major|minor)")
_DIGITS = re.compile(r"[0-9]+")


def _bpm_text(bpm) -> str:
    if bpm is None:
        return MISSING
    if isinstance(bpm, numbers.Integral) and not isinstance(bpm, bool):
        if bpm <= 0:
            raise ValueError(f"bpm must be a positive integer or None, got {bpm!r}")
        return str(int(bpm))
    if isinstance(bpm, str) and _DIGITS.fullmatch(bpm) and int(bpm) > 0:
        return bpm  # the official writes a string verbatim
    raise ValueError(f"bpm must be a positive integer (or a string of digits) or None, got {bpm!r}")


def _timesignature_text(timesignature) -> str:
    if timesignature is None:
        return MISSING
    text = timesignature
    if isinstance(timesignature, numbers.Integral) and not isinstance(timesignature, bool):
        text = str(int(timesignature))  # 4 and "4" write the same line
    if not isinstance(text, str) or text not in TIME_SIGNATURES:
        raise ValueError(f"timesignature must be one of {TIME_SIGNATURES} (beats per bar; '4' means 4/4) or None, "
                         f"got {timesignature!r}")
    return text


def _keyscale_text(keyscale) -> str:
    if keyscale is None:
        return MISSING
    if not isinstance(keyscale, str) or not _KEYSCALE.fullmatch(keyscale):
        raise ValueError(f"keyscale must look like 'C major', 'F# minor' or 'B♭ major' (note A-G, optional "
                         f"#/b/♯/♭, major/minor) or be None, got {keyscale!r}")
    return keyscale


def _duration_text(duration) -> str:
    if duration is None:
        return str(DEFAULT_DURATION_SECONDS)
    is_number = isinstance(duration, numbers.Real) and not isinstance(duration, bool)
    if not is_number or not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"duration must be a positive number of seconds or None, got {duration!r}")
    # Truncated to whole seconds (int()), as the official `_build_metadata_dict` does: 6.9 s -> "6 seconds".
    return str(int(duration))


def format_metas(bpm=None, timesignature=None, keyscale=None, duration=None) -> str:
    """The four "- key: value" lines of the Metas section (each ending in a newline)."""
    return METAS_TEMPLATE.format(
        bpm=_bpm_text(bpm),
        timesignature=_timesignature_text(timesignature),
        keyscale=_keyscale_text(keyscale),
        duration=_duration_text(duration),
    )


def format_caption(caption: str, instruction: str, bpm=None, timesignature=None, keyscale=None,
                   duration=None) -> str:
    """The caption-encoder prompt for one item.

    instruction: usually `task_instruction(task)`; a trailing ":" is added when missing (official
    `_format_instruction`). bpm: positive int (or digit string); timesignature: "2", "3", "4" or "6" (or
    the int); keyscale: e.g. "C major"; duration: seconds (int or float, truncated). None writes N/A,
    or 30 seconds for the duration.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a str, got {type(caption).__name__}")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty str, got {instruction!r}")
    if not instruction.endswith(":"):
        instruction = instruction + ":"
    metas = format_metas(bpm=bpm, timesignature=timesignature, keyscale=keyscale, duration=duration)
    return CAPTION_TEMPLATE.format(instruction=instruction, caption=caption, metas=metas)


def format_lyrics(lyrics: str, language: str) -> str:
    """The lyric text for one item. language: a code of VOCAL_LANGUAGES ("unknown" for instrumental)."""
    if not isinstance(lyrics, str):
        raise ValueError(f"lyrics must be a str, got {type(lyrics).__name__}")
    if language not in VOCAL_LANGUAGES:
        raise ValueError(f"language must be one of the vocal language codes {VOCAL_LANGUAGES}, got {language!r}")
    return LYRICS_TEMPLATE.format(language=language, lyrics=lyrics)


def _track_name(name, argument: str) -> str:
    if not isinstance(name, str) or name.lower() not in TRACK_NAMES:
        raise ValueError(f"{argument} must be one of {TRACK_NAMES}, got {name!r}")
    return name.upper()  # the instruction names the track in capitals: "Extract the DRUMS track ..."


def task_instruction(task: str, track_name: str | None = None,
                     complete_track_classes: list[str] | tuple[str, ...] | None = None) -> str:
    """The instruction of a task (official `generate_instruction`).

    track_name: for "extract" and "lego" only; None gives the task's generic instruction.
    complete_track_classes: for "complete" only; joined as "DRUMS | BASS"; None or empty gives the generic one.
    """
    if task not in TASK_INSTRUCTIONS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    generic, with_tracks = TASK_INSTRUCTIONS[task]
    if track_name is not None and task not in _TRACK_TASKS:
        raise ValueError(f"track_name is only used by the tasks {_TRACK_TASKS}, not by {task!r}")
    if complete_track_classes is not None and task != "complete":
        raise ValueError(f"complete_track_classes is only used by the task 'complete', not by {task!r}")
    if task in _TRACK_TASKS and track_name is not None:
        return with_tracks.format(_track_name(track_name, "track_name"))
    if task == "complete" and complete_track_classes:
        if isinstance(complete_track_classes, str):
            raise ValueError("complete_track_classes must be a list of track names, got a str")
        names = [_track_name(n, "complete_track_classes[]") for n in complete_track_classes]
        return with_tracks.format(" | ".join(names))
    return generic
