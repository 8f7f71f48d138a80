"""Where a report comes from: the exact command and a fingerprint of the checkpoint's files."""

from __future__ import annotations

import os
import shlex

from acestep_core.checkpoint import fingerprint as checkpoint_fingerprint


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
    """A quick identity of the files of `folders` (acestep_core.checkpoint.fingerprint); not an integrity check."""
    return checkpoint_fingerprint(folders)
