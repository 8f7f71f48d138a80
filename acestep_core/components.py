"""The component registry: each model file's module class, the config section that builds it, and the
parameter names and shapes a checkpoint must hold for it.

Everything that reads or writes weights (our checkpoint layout, the converter, the loader) asks here, so
there is one table of components in the library.
"""

from __future__ import annotations

import torch
from torch import nn

from .condition import ConditionEncoder
from .config import AceStepConfig
from .dit import DiT
from .fsq import AudioDetokenizer, AudioTokenizer
from .oobleck import Oobleck
from .qwen3 import Qwen3Encoder

# component name (also the file stem in our layout) -> (module class, AceStepConfig section it is built from)
REGISTRY: dict[str, tuple[type[nn.Module], str]] = {
    "text_encoder": (Qwen3Encoder, "text_encoder"),
    "vae": (Oobleck, "vae"),
    "dit": (DiT, "dit"),
    "condition": (ConditionEncoder, "condition"),
    "audio_tokenizer": (AudioTokenizer, "audio_tokenizer"),
    "audio_detokenizer": (AudioDetokenizer, "audio_tokenizer"),
}
COMPONENTS = tuple(REGISTRY)


def build_module(component: str, config: AceStepConfig, device: str | torch.device = "cpu") -> nn.Module:
    """Construct one component from its config section (random init, or no storage on device="meta")."""
    if component not in REGISTRY:
        raise ValueError(f"unknown component {component!r}; the components are {COMPONENTS}")
    cls, section = REGISTRY[component]
    with torch.device(device):
        return cls(getattr(config, section))


def expected_shapes(component: str, config: AceStepConfig) -> dict[str, tuple[int, ...]]:
    """Parameter (and persistent buffer) names and shapes of a component, from a meta-device build."""
    return {k: tuple(v.shape) for k, v in build_module(component, config, "meta").state_dict().items()}
