"""Songs for LoRA fine-tuning: find them, encode them once into a cache, and batch the cache.

A data set is either a JSON Lines file, one song per line

    {"audio": "songs/a.wav", "caption": "dreamy synth pop", "lyrics": "[verse]\\n...",    (audio: relative to the file)
     "language": "en", "bpm": 120, "keyscale": "A minor", "timesignature": "4"}      (optional)

or a folder (searched recursively) of audio files (.wav .flac .ogg .mp3, 48 kHz) each with a side file of the same
name: `song.json` (the fields above, without "audio") or `song.txt` (first line the caption, the rest the lyrics).
Missing lyrics mean "[Instrumental]"; missing language "unknown".

Each song is encoded once with the frozen models: VAE latents (posterior mean) and the packed condition
(caption prompt and lyric text formatted as at inference, text encoder, condition encoder with the silence
reference the pipeline uses when no reference audio is given). The official training_v2 preprocessing instead
feeds raw lyrics (no "# Languages / # Lyric" wrapper), a zero timbre reference and a duration of 0 in the
prompt, and samples the posterior; we train on the conditions inference will see. One safetensors file per song
whose name carries a digest of the audio file (path, size, time) and of the texts: a rerun reuses what is
there (resumable), and an edited caption or audio is encoded again. A song that cannot be used (no caption,
unreadable audio, shorter than MIN_SECONDS, text over the token limit) is reported and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import torch
from tqdm import tqdm

from . import audio_io, prompts, tasks
from .safetensors_io import CheckpointError, read_safetensors, write_safetensors

log = logging.getLogger("acestep_core")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MIN_SECONDS = 1.0
INSTRUMENTAL = "[Instrumental]"
OPTIONAL_FIELDS = ("lyrics", "language", "bpm", "keyscale", "timesignature")


@dataclass(frozen=True)
class Song:
    audio: str
    caption: str
    lyrics: str = INSTRUMENTAL
    language: str = "unknown"
    bpm: int | str | None = None
    keyscale: str | None = None
    timesignature: str | int | None = None


def _song(audio: str, fields: dict) -> Song:
    caption = fields.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("no caption")
    lyrics = fields.get("lyrics") or INSTRUMENTAL
    extra = {k: fields[k] for k in OPTIONAL_FIELDS[1:] if fields.get(k) is not None}
    return Song(audio, caption.strip(), lyrics if isinstance(lyrics, str) else str(lyrics), **extra)


def _side_file(audio: str) -> dict:
    stem = os.path.splitext(audio)[0]
    if os.path.isfile(stem + ".json"):
        with open(stem + ".json", encoding="utf-8") as f:
            fields = json.load(f)
        if not isinstance(fields, dict):
            raise ValueError(f"{stem}.json is not a JSON object")
        return fields
    if os.path.isfile(stem + ".txt"):
        with open(stem + ".txt", encoding="utf-8") as f:
            caption, _, lyrics = f.read().strip().partition("\n")
        return {"caption": caption, "lyrics": lyrics.strip()}
    raise ValueError(f"no caption ({os.path.basename(stem)}.json or .txt beside it)")


def discover(source: str) -> tuple[list[Song], list[tuple[str, str]]]:
    """(songs, problems): problems are (file or line, reason) of entries that cannot be used."""
    source = os.fspath(source)
    songs, problems = [], []
    if os.path.isdir(source):
        # Recursively, like the official preprocessing; sorted, so the song order does not depend on the disk.
        found = sorted(os.path.join(root, n) for root, _, names in os.walk(source) for n in names
                       if n.lower().endswith(AUDIO_EXTENSIONS))
        for audio in found:
            try:
                songs.append(_song(audio, _side_file(audio)))
            except (ValueError, OSError, UnicodeDecodeError) as e:
                problems.append((audio, str(e)))
    elif os.path.isfile(source):
        root = os.path.dirname(os.path.abspath(source))
        with open(source, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{source}:{number}"
                try:
                    fields = json.loads(line)
                    audio = (fields.get("audio") or fields.get("audio_path")) if isinstance(fields, dict) else None
                    if not isinstance(audio, str):
                        raise ValueError("no 'audio' path")
                    songs.append(_song(os.path.join(root, audio), fields))
                except (ValueError, AttributeError) as e:
                    problems.append((where, str(e)))
    else:
        raise ValueError(f"data: {source} is neither a folder nor a JSON Lines file")
    return songs, problems


def _cache_name(song: Song, caption: str, lyric_text: str) -> str:
    stat = os.stat(song.audio)
    key = json.dumps([os.path.abspath(song.audio), stat.st_size, stat.st_mtime_ns, caption, lyric_text])
    stem = os.path.splitext(os.path.basename(song.audio))[0]
    return f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


@torch.no_grad()
def encode_song(pipe, song: Song, max_seconds: float) -> tuple[dict[str, torch.Tensor], str, str]:
    """-> ({latents [T, 64], condition [L, W]}, caption prompt, lyric text).

    One song per call, so its condition has no padding (the mask is all ones and is not stored).
    """
    wave = audio_io.read_audio(song.audio, pipe.sample_rate)  # [2, S]; ValueError for a bad file
    seconds = wave.shape[-1] / pipe.sample_rate
    if seconds < MIN_SECONDS:
        raise ValueError(f"{seconds:.2f} s long, shorter than {MIN_SECONDS:g} s")
    wave = wave[:, : int(max_seconds * pipe.sample_rate)]
    caption = prompts.format_caption(song.caption, prompts.DEFAULT_INSTRUCTION, bpm=song.bpm,
                                     timesignature=song.timesignature, keyscale=song.keyscale,
                                     duration=min(seconds, max_seconds))
    lyric_text = prompts.format_lyrics(song.lyrics, song.language)
    tok = pipe.tokenizer
    limits = (("caption", caption, tok.caption_max_tokens), ("lyrics", lyric_text, tok.lyric_max_tokens))
    for what, text, limit in limits:
        n = tok.count(text)
        if n > limit:
            raise ValueError(f"{what} is {n} tokens once formatted, the model takes at most {limit}")
    latents = pipe.encode_audio(wave[None])[0]  # [T, 64], posterior mean
    text, text_mask, lyric, lyric_mask = pipe.encode_text([caption], [lyric_text])
    refs = pipe.silence_latent[:, : pipe.config.condition.timbre_fix_frame]  # no reference audio: as inference
    order = torch.zeros(1, dtype=torch.long, device=pipe.device)
    states, _ = pipe.condition_encoder(text, text_mask, lyric, lyric_mask, refs, order)
    # float32 in the cache whatever the model dtype: the trainer casts to its own.
    tensors = {"latents": latents.float().cpu(), "condition": states[0].float().cpu()}
    return tensors, caption, lyric_text


def build_cache(pipe, songs: list[Song], cache_dir: str, *, max_seconds: float = 240.0,
                progress: bool = True) -> tuple[list[str], list[tuple[str, str]], int]:
    """Encode every song not cached yet -> (cache files in song order, problems, how many were reused)."""
    os.makedirs(cache_dir, exist_ok=True)
    files, problems, reused = [], [], 0
    for song in tqdm(songs, desc="encoding songs", unit="song", disable=not progress):
        try:
            caption = prompts.format_caption(song.caption, prompts.DEFAULT_INSTRUCTION, bpm=song.bpm,
                                             timesignature=song.timesignature, keyscale=song.keyscale)
            lyric_text = prompts.format_lyrics(song.lyrics, song.language)
            path = os.path.join(cache_dir, _cache_name(song, caption, lyric_text))
            if os.path.isfile(path):
                reused += 1
            else:
                tensors, _, _ = encode_song(pipe, song, max_seconds)
                source = {"audio": os.path.abspath(song.audio), "caption": song.caption}
                write_safetensors(tensors, path, metadata=source)
            files.append(path)
        except (ValueError, OSError) as e:
            problems.append((song.audio, str(e).removeprefix(f"{song.audio}: ")))
    return files, problems, reused


def load_batch(files: list[str], silence: torch.Tensor, *, device, dtype) -> dict[str, torch.Tensor]:
    """Cached songs -> x0 [B, T, C], context [B, T, 2 C], condition [B, L, W], zero-padded to the longest (official).

    The context is the text-to-music one: tiled silence latents and a chunk mask of ones.
    """
    items = []
    for f in files:
        t = read_safetensors(f)
        if set(t) != {"latents", "condition"}:
            raise CheckpointError(f"{f}: not a song cache file (keys {sorted(t)})")
        items.append(t)
    frames = max(t["latents"].shape[0] for t in items)
    tokens = max(t["condition"].shape[0] for t in items)
    b, c, width = len(items), silence.shape[-1], items[0]["condition"].shape[1]
    x0 = torch.zeros(b, frames, c)
    context = torch.zeros(b, frames, 2 * c)
    condition = torch.zeros(b, tokens, width)
    for i, t in enumerate(items):
        n, length = t["latents"].shape[0], t["condition"].shape[0]
        x0[i, :n] = t["latents"]
        context[i, :n, :c] = tasks.tile_silence(silence.float().cpu(), n)
        context[i, :n, c:] = 1.0  # chunk mask: generate everywhere
        condition[i, :length] = t["condition"]
    return {k: v.to(device=device, dtype=dtype) for k, v in
            (("x0", x0), ("context", context), ("condition", condition))}
