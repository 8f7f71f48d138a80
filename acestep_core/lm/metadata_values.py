"""The value tables of the planner's metadata fields, and validation of user-given metadata.

These are the official ACE-Step 1.5 tables (``acestep/constants.py``): the constrained decoder can only
write values from them, so a user value outside them is rejected up front with one clear error instead
of being injected into the CoT text unchecked.
"""

from ..prompts import VOCAL_LANGUAGES

# The 51 vocal language codes of the caption side (ISO 639-1 style, "yue", "unknown"). The order matters to
# the decoder: it is the insertion order of the official language prefix tree, which is the same list.
LANGUAGES = VOCAL_LANGUAGES

# 7 notes x 5 accidentals (none, ASCII #/b, Unicode sharp/flat) x 2 modes = 70 keyscales, e.g. "F# minor".
KEYSCALE_NOTES = ("A", "B", "C", "D", "E", "F", "G")
KEYSCALE_ACCIDENTALS = ("", "#", "b", "\u266f", "\u266d")
KEYSCALE_MODES = ("major", "minor")
KEYSCALES = tuple(f"{note}{acc} {mode}" for note in KEYSCALE_NOTES for acc in KEYSCALE_ACCIDENTALS for mode in KEYSCALE_MODES)

BPM_MIN, BPM_MAX = 30, 300
DURATION_MIN, DURATION_MAX = 10, 600  # seconds; the handler lowers the max on small GPUs (max_duration)
TIMESIGNATURES = (2, 3, 4, 6)  # beats per bar: 2/4, 3/4, 4/4, 6/8

METADATA_FIELDS = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")


def _number(field: str, value) -> float:
    """The numeric value of a bpm/duration entry (int, float or numeric string); bools are not numbers."""
    if isinstance(value, bool):
        raise ValueError(f"user metadata {field}={value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"user metadata {field}={value!r} is not a number") from None


def check_user_metadata(metadata: dict | None, max_duration: int = DURATION_MAX) -> dict:
    """Validate user-given metadata before it is injected into the planner's CoT.

    Returns a new dict holding only the fields that are given (``None`` means "let the LM write it"),
    with their values unchanged: the decoder injects ``" " + str(value) + "\\n"`` exactly as the official
    handler does, so normalising here would change the tokens. Raises one ValueError naming the field for
    an unknown key, a bpm outside 30..300, a duration outside 10..max_duration, a time signature other than
    2/3/4/6 (``"4"``, ``4`` or ``"4/4"`` style), an unknown keyscale or language, a non-string caption/genres.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"user metadata must be a dict or None, got {type(metadata).__name__}")
    checked = {}
    for field, value in metadata.items():
        if field not in METADATA_FIELDS:
            raise ValueError(f"unknown user metadata field {field!r}; expected one of {', '.join(METADATA_FIELDS)}")
        if value is None:
            continue
        if field == "bpm" and not BPM_MIN <= _number(field, value) <= BPM_MAX:
            raise ValueError(f"user metadata bpm={value!r} is outside {BPM_MIN}..{BPM_MAX}")
        if field == "duration" and not DURATION_MIN <= _number(field, value) <= max_duration:
            raise ValueError(f"user metadata duration={value!r} is outside {DURATION_MIN}..{max_duration} seconds")
        if field == "timesignature" and str(value).strip().split("/")[0] not in {str(t) for t in TIMESIGNATURES}:
            raise ValueError(f"user metadata timesignature={value!r} is not one of {TIMESIGNATURES} (beats per bar)")
        if field == "keyscale" and value not in KEYSCALES:
            raise ValueError(f"user metadata keyscale={value!r} is not a keyscale like 'C major', 'F# minor', 'B\u266d major'")
        if field == "language" and value not in LANGUAGES:
            raise ValueError(f"user metadata language={value!r} is not one of {', '.join(LANGUAGES)}")
        if field in ("caption", "genres") and not isinstance(value, str):
            raise ValueError(f"user metadata {field} must be a string, got {type(value).__name__}")
        checked[field] = value
    return checked
