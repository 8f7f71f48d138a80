"""A tiny random diffusers AceStepPipeline saved to disk, shared by the live diffusers tests.

Real audio geometry (48 kHz stereo, hop 1920, 64 latent channels) and the real Qwen3 tokenizer from the
fixtures; every width tiny and every weight random, so a whole request runs in about a second on a CPU.
Import it from a test module as `from _tiny_diffusers import build` (pytest puts tests/ on sys.path).
"""

from pathlib import Path

import torch

FIX = Path(__file__).parent / "fixtures"
TOKENIZER = FIX / "official_tiny_turbo" / "checkpoints" / "Qwen3-Embedding-0.6B"


def randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if p.dim() == 1 and "norm" in name:
            p.data.copy_(1.0 + 0.1 * noise)  # norm weights around 1
        else:
            p.data.copy_(0.2 * noise)
    for name, b in module.named_buffers():
        if name.endswith("silence_latent"):
            b.copy_(torch.randn(b.shape, generator=gen))


def build(tmp_path: Path, model_version: str, *, responsive_vae: bool = False) -> Path:
    """Write a random diffusers AceStepPipeline ("turbo" or "base") under tmp_path; returns its folder.

    The random weight-norm gains (weight_g ~ 0.2 randn) shrink every VAE convolution, so the random decoder's
    output hardly depends on its latents (1e-6 relative). responsive_vae=True sets the decoder's gains to 1:
    each convolution then keeps the variance of its input and the audio follows the latents.
    """
    from diffusers import (AceStepPipeline, AceStepTransformer1DModel, AutoencoderOobleck,
                           FlowMatchEulerDiscreteScheduler)
    from diffusers.pipelines.ace_step import (AceStepAudioTokenDetokenizer, AceStepAudioTokenizer,
                                              AceStepConditionEncoder)
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    gen = torch.Generator().manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    shared = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  sliding_window=4)
    text = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    transformer = AceStepTransformer1DModel(num_hidden_layers=4, model_version=model_version,
                                            is_turbo=model_version == "turbo", **shared)
    condition = AceStepConditionEncoder(text_hidden_dim=32, num_lyric_encoder_hidden_layers=2,
                                        num_timbre_encoder_hidden_layers=2, **shared)
    tok = AceStepAudioTokenizer(fsq_dim=32, **shared)
    detok = AceStepAudioTokenDetokenizer(**shared)
    vae = AutoencoderOobleck(encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10],
                             channel_multiples=[1, 1, 1, 1, 1], decoder_channels=4, decoder_input_channels=64,
                             audio_channels=2, sampling_rate=48000)
    for m in (text, transformer, condition, tok, detok, vae):
        randomize(m, gen)
    if responsive_vae:
        for name, p in vae.decoder.named_parameters():
            if name.endswith("weight_g"):
                p.data.fill_(1.0)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    pipe = AceStepPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, transformer=transformer,
                           condition_encoder=condition, scheduler=scheduler, audio_tokenizer=tok,
                           audio_token_detokenizer=detok)
    folder = tmp_path / f"diffusers-{model_version}{'-responsive' if responsive_vae else ''}"
    pipe.save_pretrained(folder)
    return folder
