"""acestep-core: a small, readable, pure-PyTorch implementation of ACE-Step 1.5 text-to-music.

    import acestep_core
    pipe = acestep_core.load_pipeline("ACE-Step/Ace-Step1.5")    # or a local folder
    song = pipe("upbeat synth pop", audio_duration=30, seed=0).audios  # [1, 2, S] at 48 kHz

The command line is `acestep generate --help` (acestep_core/cli.py).
"""

from __future__ import annotations

import torch

from . import hub
from .lm.planner import load_planner  # noqa: F401  (the 5 Hz LM planner)
from .pipeline import AceStepPipeline
from .pipeline import load_pipeline as _load_local

__version__ = "0.1.0"  # keep equal to pyproject.toml's version
__all__ = ["AceStepPipeline", "load_pipeline", "__version__"]


def load_pipeline(path, device="cpu", dtype: torch.dtype = torch.float32, *,
                  variant: str | None = None, compute_dtype: torch.dtype | None = None) -> AceStepPipeline:
    """`pipeline.load_pipeline`, plus Hugging Face Hub repository ids ("owner/name" or "owner/name@revision").

    `path` is a folder in our layout, an official `checkpoints/` folder (or a model folder inside it), a
    diffusers AceStepPipeline folder, or a Hub id, which `hub.resolve_checkpoint` first downloads (only the
    files of the chosen variant) into the Hub cache. An existing local path is never sent to the Hub.
    """
    return _load_local(hub.resolve_checkpoint(path, variant), device, dtype, variant=variant,
                       compute_dtype=compute_dtype)
