"""acestep-core: a small, readable, pure-PyTorch implementation of ACE-Step 1.5 text-to-music.

    import acestep_core
    pipe = acestep_core.load_pipeline("ACE-Step/Ace-Step1.5")    # or a local folder
    song = pipe("upbeat synth pop", audio_duration=30, seed=0).audios  # [1, 2, S] at 48 kHz

    planner = acestep_core.load_planner("checkpoints/acestep-5Hz-lm-1.7B")  # the 5 Hz LM ("thinking")
    plan = planner.plan("dreamy lo-fi", "[verse]\n...", seed=0)           # metadata, caption, audio codes

The command line is `acestep generate --help` (acestep_core/cli.py).
"""

from .lm.planner import Plan, Planner, load_planner
from .pipeline import AceStepPipeline, load_pipeline
from .version import __version__

__all__ = ["AceStepPipeline", "load_pipeline", "Planner", "Plan", "load_planner", "__version__"]
