"""The 5 Hz LM's chat prompts, rendered by hand exactly as the official handler's chat template renders them.

For a system + user conversation with a generation prompt, the Qwen3 chat template (and the reduced one
of the tiny fixture) produces

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n

with both contents verbatim. The system content is always "# Instruction\\n{instruction}\\n\\n".
The codes phase keeps the assistant turn open and appends the CoT and a blank line, so the first sampled
token directly follows "</think>\\n\\n" as in training. The official builders are
`LLMHandler.build_formatted_prompt*` in acestep/llm_inference.py.
"""

from __future__ import annotations

LM_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
UNDERSTAND_INSTRUCTION = "Understand the given musical conditions and describe the audio semantics accordingly:"
INSPIRE_INSTRUCTION = "Expand the user's input into a more detailed and specific musical description:"
DEFAULT_NEGATIVE_PROMPT = "NO USER INPUT"
EMPTY_COT = "<think>\n\n</think>"  # what the chat template writes for empty reasoning (the uncond CoT)


def chat(instruction: str, user: str) -> str:
    return (f"<|im_start|>system\n# Instruction\n{instruction}\n\n<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def has_negative_prompt(negative_prompt: str | None) -> bool:
    """A negative prompt counts only when it is non-blank and not the default placeholder."""
    return bool(negative_prompt and negative_prompt.strip() and negative_prompt.strip() != DEFAULT_NEGATIVE_PROMPT)


def caption_lyrics(caption: str, lyrics: str) -> str:
    return f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"


# --- phase 1: the CoT (metadata) ----------------------------------------------------------------------------

def cot_prompt(caption: str, lyrics: str) -> str:
    return chat(LM_INSTRUCTION, caption_lyrics(caption, lyrics))


def cot_uncond_prompt(caption: str, lyrics: str, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT) -> str:
    """Unconditional phase-1 prompt: the negative prompt replaces the caption, or the caption is dropped.

    The official phase 1 runs without CFG (cfg_scale is forced to 1.0), so the planner never uses this;
    it is kept so the prompt set matches the official builder's.
    """
    if has_negative_prompt(negative_prompt):
        return chat(LM_INSTRUCTION, caption_lyrics(negative_prompt, lyrics))
    return chat(LM_INSTRUCTION, f"# Lyric\n{lyrics}\n")


# --- phase 2: the audio codes -------------------------------------------------------------------------------

def codes_prompt(caption: str, lyrics: str, cot: str) -> str:
    return chat(LM_INSTRUCTION, caption_lyrics(caption, lyrics)) + cot + "\n\n"


def codes_uncond_prompt(negative_prompt: str = DEFAULT_NEGATIVE_PROMPT) -> str:
    """The CFG-dropout layout of training: the user turn is just the negative prompt, the CoT is empty."""
    user = negative_prompt if has_negative_prompt(negative_prompt) else DEFAULT_NEGATIVE_PROMPT
    return chat(LM_INSTRUCTION, user) + EMPTY_COT + "\n\n"


def codes_uncond_legacy_prompt(caption: str, lyrics: str, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT) -> str:
    """The official `use_legacy_cfg_prompt=True` variant: caption/lyrics kept, only the CoT emptied."""
    shown = negative_prompt if has_negative_prompt(negative_prompt) else caption
    return chat(LM_INSTRUCTION, caption_lyrics(shown, lyrics)) + EMPTY_COT + "\n\n"


# --- understand (codes -> metadata + lyrics) and inspire (query -> caption, lyrics, metadata) ------------

def understand_prompt(audio_codes: str) -> str:
    return chat(UNDERSTAND_INSTRUCTION, audio_codes)


def inspire_prompt(query: str, instrumental: bool = False) -> str:
    return chat(INSPIRE_INSTRUCTION, f"{query}\n\ninstrumental: {'true' if instrumental else 'false'}")
