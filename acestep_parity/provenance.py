"""Where a report comes from: the exact command and a fingerprint of the checkpoint's files."""

from __future__ import annotations

import hashlib
import os
import shlex

SAMPLE = 1 << 20  # bytes read from each end of a large file


def command_line(argv: list[str]) -> str:
    return shlex.join(["acestep", "parity", *argv])


def checkpoint_folders(root: str, layout: str) -> list[str]:
    """The folders one model reads: an official model folder also reads vae/ and Qwen3-Embedding-0.6B/ beside it."""
    if layout != "official":
        return [root]
    parent = os.path.dirname(root)
    return [root] + [os.path.join(parent, d) for d in ("vae", "Qwen3-Embedding-0.6B")
                     if os.path.isdir(os.path.join(parent, d))]


def fingerprint(folders: list[str]) -> str:
    """A quick fingerprint of the files of `folders`: sha256 over every file's name, size and first and last MiB
    (the whole file when smaller). It tells checkpoints apart; it is not an integrity check."""
    h = hashlib.sha256()
    for index, folder in enumerate(folders):
        for base, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(base, name)
                size = os.path.getsize(path)
                h.update(f"{index}/{os.path.relpath(path, folder)}\0{size}\0".encode())  # the folder's name may vary
                with open(path, "rb") as f:
                    h.update(f.read(SAMPLE))
                    if size > 2 * SAMPLE:
                        f.seek(size - SAMPLE)
                        h.update(f.read(SAMPLE))
                    elif size > SAMPLE:
                        h.update(f.read())
    return "sha256:" + h.hexdigest()[:16]
