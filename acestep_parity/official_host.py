"""The official handler around the loaded models, for official_worker.py (runs INSIDE the official environment).

The handler package's `__init__` imports every mixin (LoRA, training, MLX, UI helpers, torchaudio); a bare
stand-in is registered for that package so that only the modules `service_generate` and the VAE helpers
need are imported. Imports only the official package, torch and the standard library.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types

import torch

HANDLER = "acestep.core.generation.handler"
MIXINS = {  # module of acestep/core/generation/handler -> the mixin class it defines
    "metadata_utils": "MetadataMixin", "prompt_utils": "PromptMixin", "conditioning_text": "ConditioningTextMixin",
    "conditioning_masks": "ConditioningMaskMixin", "conditioning_target": "ConditioningTargetMixin",
    "conditioning_batch": "ConditioningBatchMixin", "conditioning_embed": "ConditioningEmbedMixin",
    "batch_prep": "BatchPrepMixin", "audio_codes": "AudioCodesMixin", "vae_encode": "VaeEncodeMixin",
    "vae_encode_chunks": "VaeEncodeChunksMixin", "vae_decode": "VaeDecodeMixin",
    "vae_decode_chunks": "VaeDecodeChunksMixin", "memory_utils": "MemoryUtilsMixin", "task_utils": "TaskUtilsMixin",
    "padding_utils": "PaddingMixin", "generate_music_request": "GenerateMusicRequestMixin",
    "service_generate": "ServiceGenerateMixin", "service_generate_request": "ServiceGenerateRequestMixin",
    "service_generate_execute": "ServiceGenerateExecuteMixin",
    "service_generate_outputs": "ServiceGenerateOutputsMixin",
}
EXIT_IMPORT, EXIT_VARIANT = 3, 4  # statuses the caller turns into one-line messages


def _handler(name: str):
    if HANDLER not in sys.modules:
        generation = importlib.import_module("acestep.core.generation")
        stand_in = types.ModuleType(HANDLER)
        stand_in.__path__ = [os.path.join(os.path.dirname(generation.__file__), "handler")]
        sys.modules[HANDLER] = stand_in
    return importlib.import_module(f"{HANDLER}.{name}")


def known_variants() -> dict[str, str]:
    """model_version -> module defining AceStepConditionGenerationModel (acestep/models/<version>/modeling_*.py)."""
    models = os.path.dirname(importlib.import_module("acestep.models").__file__)
    found = {}
    for version in sorted(os.listdir(models)):
        folder = os.path.join(models, version)
        files = sorted(f for f in os.listdir(folder) if f.startswith("modeling_") and f.endswith(".py")) \
            if os.path.isdir(folder) else []
        if files:
            found[version] = f"acestep.models.{version}.{files[0][:-3]}"
    return found


def probe() -> dict:
    """Imports everything a job needs; -> versions and the known variants."""
    import diffusers
    import transformers

    for name in MIXINS:
        _handler(name)
    variants = known_variants()
    if "turbo" in variants:
        importlib.import_module(variants["turbo"])  # what every model module imports (vector_quantize_pytorch, ...)
    import safetensors

    try:  # DCW: without pytorch_wavelets (and PyWavelets) the official correction silently does nothing
        from pytorch_wavelets import DWT1DForward  # noqa: F401
        dcw = None
    except ImportError as e:
        dcw = f"{type(e).__name__}: {e}"
    return {"dcw_missing": dcw, "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__,
            "diffusers": diffusers.__version__, "safetensors": safetensors.__version__,
            "acestep": os.path.dirname(os.path.dirname(importlib.import_module("acestep").__file__)),
            "variants": sorted(variants)}


# --- the host: the official handler's mixins around the loaded models ------------------------------------

def load_host(job: dict):
    from diffusers import AutoencoderOobleck
    from transformers import AutoModel, AutoTokenizer

    mixins = tuple(getattr(_handler(module), cls) for module, cls in MIXINS.items())
    device, dtype = job["device"], getattr(torch, job["dtype"])

    class Host(*mixins):
        """The subset of AceStepHandler that `service_generate` and the VAE helpers use."""

        sample_rate = 48000
        use_mlx_vae = use_mlx_dit = False
        mlx_vae = mlx_decoder = None
        disable_tqdm = True
        offload_to_cpu = offload_dit_to_cpu = False
        batch_size = 1

        def _load_model_context(self, name):
            return contextlib.nullcontext()

        def _ensure_silence_latent_on_device(self):
            self.silence_latent = self.silence_latent.to(device=self.device, dtype=self.dtype)

        def _empty_cache(self):
            pass

        def _get_vae_dtype(self, device=None):
            return self.dtype  # deviation: the handler picks bf16 on CUDA; both sides compute in the job's dtype

    host = Host()
    host.device, host.dtype = device, dtype
    module = importlib.import_module(known_variants()[job["model_version"]])
    model = module.AceStepConditionGenerationModel.from_pretrained(job["model_dir"], attn_implementation="sdpa",
                                                                   dtype=dtype)
    model.config._attn_implementation = "sdpa"
    host.model = model.to(device).to(dtype).eval()
    host.config = model.config
    if not hasattr(host.config, "is_turbo"):
        # The handler reads config.is_turbo (a key released config.json files may carry; the tiny fixtures lack it).
        host.config.is_turbo = "turbo" in job["model_version"]
    host.text_tokenizer = AutoTokenizer.from_pretrained(job["text_encoder_dir"])
    host.text_encoder = AutoModel.from_pretrained(job["text_encoder_dir"]).to(device).to(dtype).eval()
    host.vae = AutoencoderOobleck.from_pretrained(job["vae_dir"]).to(device).to(dtype).eval()
    silence = torch.load(os.path.join(job["model_dir"], "silence_latent.pt"), weights_only=True)
    host.silence_latent = silence.transpose(1, 2).to(device).to(dtype)  # [1, 64, S] -> [1, S, 64], as the handler
    return host


