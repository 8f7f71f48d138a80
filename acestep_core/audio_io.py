"""Reading input audio and writing songs: strict formats, atomic writes, every written file checked.

Reading (soundfile): any format libsndfile decodes, returned float32 channels-first [C, S]. Mono is
duplicated to stereo; more channels than the model takes, or a sample rate other than the model's, is a
ValueError naming the file (there is no resampler here on purpose: resample with e.g. ffmpeg or sox).
So is a truncated file: fewer frames than its header declares are never read as a shorter song.

Writing: `.wav` is 32-bit float (the pipeline's float32 samples, bit for bit), `.flac` is 24-bit PCM.
The float WAV header is written here, not by libsndfile, because libsndfile adds a PEAK chunk holding
the time of writing, and two runs with the same seed must give byte-identical files. A file is written
to a hidden temporary name in the destination folder, read back and checked (sample rate, channel count,
length, finite samples within [-1, 1]), and only then renamed onto the destination with `os.replace`:
a run that fails or is killed never leaves a partial file under the destination name (a SIGKILL during
the write can leave the hidden `.NAME.*.partial` file behind, never a truncated NAME).
"""

from __future__ import annotations

import os
import secrets
import struct

import numpy as np
import soundfile as sf
import torch

FORMATS = {".wav": "32-bit float WAV", ".flac": "24-bit FLAC"}
_READ_BLOCK = 1 << 18  # frames per block when reading a written file back


def read_audio(path: str | os.PathLike, sample_rate: int, channels: int = 2) -> torch.Tensor:
    """Read an audio file -> float32 [channels, S]. Mono is duplicated; the rate must equal `sample_rate`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    try:
        with sf.SoundFile(path) as f:
            rate, declared = f.samplerate, f.frames
            # always_2d: mono files come back [S, 1] like the others, never [S].
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ValueError(f"{path}: cannot read this audio file ({e})") from None
    # libsndfile shortens a WAV whose data chunk runs past the end of the file to what is there, so its
    # frame count alone does not reveal a truncated file: the RIFF header's own count does.
    header_frames = _wav_declared_frames(path)
    if header_frames is not None and header_frames > declared:
        declared = header_frames
    if data.shape[0] < declared:
        raise ValueError(f"{path}: truncated: the header declares {declared} frames but only {data.shape[0]} "
                         "could be read")
    if rate != sample_rate:
        raise ValueError(f"{path}: sample rate is {rate} Hz but the model needs {sample_rate} Hz; resample it first "
                         f"(e.g. `ffmpeg -i IN -ar {sample_rate} OUT.wav`)")
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the file holds no audio (0 frames)")
    if data.shape[1] == 1 and channels > 1:
        data = np.repeat(data, channels, axis=1)  # [S, 1] -> [S, channels]
    if data.shape[1] != channels:
        raise ValueError(f"{path}: {data.shape[1]} channels; the model takes mono or {channels} channels")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: contains NaN or infinite samples")
    # [S, C] -> [C, S]; contiguous so the VAE's first convolution gets a dense tensor.
    return torch.from_numpy(np.ascontiguousarray(data.T))


def _wav_declared_frames(path: str) -> int | None:
    """Frames a RIFF/WAVE file's 'data' chunk declares (its size / block align); None for other files.

    Walks the chunk headers only (seeking over their bodies). A size of 0 or 0xFFFFFFFF (streamed WAVs,
    RF64) declares nothing.
    """
    with open(path, "rb") as f:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"fmt ":
                fmt = f.read(min(size, 16))
                if len(fmt) < 14:
                    return None
                block_align = struct.unpack("<H", fmt[12:14])[0]  # bytes per frame, all channels
                f.seek(size - len(fmt) + (size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
            elif kind == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                f.seek(size + (size & 1), os.SEEK_CUR)


def output_format(path: str | os.PathLike) -> str:
    """The extension of an output path (".wav" or ".flac"); anything else is a ValueError."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{os.fspath(path)}: unsupported output type {ext or '(none)'!r}; use .wav or .flac")
    return ext


def _as_frames(audio) -> np.ndarray:
    """[C, S] tensor or array -> float32 numpy [S, C] (the interleaved order audio files store)."""
    if isinstance(audio, torch.Tensor):
        # float32 on the CPU: the file stores float32 (WAV) or 24-bit integers converted from it (FLAC).
        audio = audio.detach().to(device="cpu", dtype=torch.float32).numpy()
    audio = np.asarray(audio)
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise ValueError(f"audio must have shape [channels (1 or 2), samples > 0], got {list(audio.shape)}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be floating point, got dtype {audio.dtype}")
    audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples; nothing was written")
    peak = float(np.abs(audio).max())
    if peak > 1.0:
        raise ValueError(f"audio peak {peak:.4f} exceeds 1.0 (full scale); normalise it before writing")
    return np.ascontiguousarray(audio.T)  # [C, S] -> [S, C]


def _write_float_wav(f, frames: np.ndarray, sample_rate: int) -> None:
    """A canonical IEEE-float WAV: RIFF header, 'fmt ' (format 3), 'fact', 'data' (interleaved little-endian f32)."""
    n, channels = frames.shape
    data = frames.astype("<f4", copy=False).tobytes()
    block = 4 * channels
    fmt = struct.pack("<HHIIHH", 3, channels, sample_rate, sample_rate * block, block, 32)
    fact = struct.pack("<I", n)  # frames per channel; required by the WAV spec for non-PCM data
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", len(fact)) + fact
            + b"data" + struct.pack("<I", len(data)))
    if len(body) + len(data) > 0xFFFFFFFF:
        raise ValueError("audio too long for a WAV file (4 GiB); write .flac instead")
    f.write(b"RIFF" + struct.pack("<I", len(body) + len(data)) + body)
    f.write(data)


def _encode(f, frames: np.ndarray, sample_rate: int, ext: str) -> None:
    if ext == ".wav":
        _write_float_wav(f, frames, sample_rate)
    else:
        sf.write(f, frames, sample_rate, format="FLAC", subtype="PCM_24")


def name_max(folder: str) -> int:
    """The longest file name, in bytes, that the file system holding `folder` takes (255 where unknown)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer for this folder
        return 255
    return limit if limit > 0 else 255


def _temp_name(name: str, limit: int) -> str:
    """The hidden `.NAME.XXXXXXXX.partial` name beside the output, NAME shortened so the whole fits `limit`."""
    suffix = f".{secrets.token_hex(4)}.partial"
    while len(os.fsencode("." + name + suffix)) > limit and len(name) > 1:
        name = name[:-1]
    return "." + name + suffix


def _check_written(path: str, frames: np.ndarray, sample_rate: int, ext: str) -> None:
    """Read the file back with libsndfile: header fields, length, and every sample finite in [-1, 1]."""
    info = sf.info(path)
    expected = (sample_rate, frames.shape[1], frames.shape[0])
    found = (info.samplerate, info.channels, info.frames)
    if found != expected:
        raise OSError(f"{path}: read back {found} (rate, channels, frames), expected {expected}")
    start = 0
    for block in sf.blocks(path, blocksize=_READ_BLOCK, dtype="float32", always_2d=True):
        if not np.isfinite(block).all() or float(np.abs(block).max()) > 1.0:
            raise OSError(f"{path}: read back samples that are not finite or exceed full scale")
        if ext == ".wav" and not np.array_equal(block, frames[start:start + len(block)]):
            raise OSError(f"{path}: read back samples that differ from the ones written")
        start += len(block)
    if start != frames.shape[0]:
        raise OSError(f"{path}: read back {start} frames, expected {frames.shape[0]}")


def write_audio(path: str | os.PathLike, audio, sample_rate: int) -> str:
    """Write audio [C, S] (tensor or array, finite, within [-1, 1]) to a .wav or .flac file, atomically.

    Returns the absolute path. On any error (or interruption) the destination is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    ext = output_format(path)
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    frames = _as_frames(audio)
    folder, name = os.path.split(path)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: output folder does not exist")
    tmp = os.path.join(folder, _temp_name(name, name_max(folder)))
    # O_EXCL: never write through an existing file or link; mode 0o666 lets the umask decide, as for any new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _encode(f, frames, sample_rate, ext)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        _check_written(tmp, frames, sample_rate, ext)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
