"""LoRA / LoKr adapters (acestep_core/adapters.py, lokr.py) against references.

- LoRA: a random adapter made and saved by peft 0.21 in the official PEFT folder layout; our whole pipeline with it
  vs diffusers 0.42.1's `load_lora_weights` on the same random checkpoint (tiny and mid widths), and our DiT vs peft
  applied to the same DiT module tree. diffusers' own LoRA file layout loads to the same output.
- LoKr: the LyCORIS file layout (written here by hand, as the official trainer's `lycoris` writes it) vs the official
  unmerged formula W x + m * alpha / r * kron(W1, W2) x computed by hand, for every factor layout.
- The manager: disable = base output bitwise, fuse / unfuse restores the base weights bitwise, no base weight is
  copied, rank 64 costs < 10 % of a real-width DiT step (counted FLOPs), strict loading errors name the key.
"""

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from acestep_core import adapters
from acestep_core.demo import demo_checkpoint
from acestep_core.dit import DiT
from acestep_core.pipeline import load_pipeline
from acestep_core.safetensors_io import CheckpointError

peft = pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

from _tiny_diffusers import FIX, TOKENIZER, randomize  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def rel(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _diffusers_folder(tmp_path, width: int, layers: int):
    """A random diffusers AceStepPipeline (tiny VAE / text encoder) with a DiT of `width` and `layers`."""
    from diffusers import (AceStepPipeline, AceStepTransformer1DModel, AutoencoderOobleck,
                           FlowMatchEulerDiscreteScheduler)
    from diffusers.pipelines.ace_step import (AceStepAudioTokenDetokenizer, AceStepAudioTokenizer,
                                              AceStepConditionEncoder)
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    gen = torch.Generator().manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    heads = width // 16
    shared = dict(hidden_size=width, intermediate_size=2 * width, num_attention_heads=heads,
                  num_key_value_heads=heads // 2, head_dim=16, sliding_window=8)
    small = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    text = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    transformer = AceStepTransformer1DModel(num_hidden_layers=layers, model_version="turbo", is_turbo=True, **shared)
    condition = AceStepConditionEncoder(text_hidden_dim=32, num_lyric_encoder_hidden_layers=2,
                                        num_timbre_encoder_hidden_layers=2, **shared)
    tok = AceStepAudioTokenizer(fsq_dim=32, **small, sliding_window=4)
    detok = AceStepAudioTokenDetokenizer(**small, sliding_window=4)
    vae = AutoencoderOobleck(encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10],
                             channel_multiples=[1, 1, 1, 1, 1], decoder_channels=4, decoder_input_channels=64,
                             audio_channels=2, sampling_rate=48000)
    for m in (text, transformer, condition, tok, detok, vae):
        randomize(m, gen)
    for m in (transformer, condition):  # 1 / sqrt(fan-in) matrices: activations keep their scale at any width
        for name, p in m.named_parameters():
            if p.dim() >= 2:
                p.data.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    pipe = AceStepPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, transformer=transformer,
                           condition_encoder=condition, scheduler=scheduler, audio_tokenizer=tok,
                           audio_token_detokenizer=detok)
    folder = tmp_path / f"diffusers-{width}x{layers}"
    pipe.save_pretrained(folder)
    return folder


def _peft_adapter(dit, folder, rank, alpha, seed, target_modules=TARGETS):
    """A random LoRA made by peft on a copy of `dit` (same module names as the official decoder), saved by peft."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(dit), LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules,
                                                          task_type="FEATURE_EXTRACTION"))
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def _demo():
    return load_pipeline(demo_checkpoint())


@pytest.fixture
def demo(_demo):
    """The demo pipeline, shared by the tests; whatever adapters a test loads are unloaded after it."""
    yield _demo
    mgr = adapters.manager(_demo.dit)
    for name in list(mgr.adapters):
        mgr.unload(name)


def _dit_inputs(seed=0, batch=1, frames=30, tokens=7):
    gen = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(batch, frames, 64, generator=gen), torch.randn(batch, frames, 128, generator=gen)
    return x, torch.rand(batch, generator=gen), ctx, torch.randn(batch, tokens, 32, generator=gen)


def _run(dit, inputs):
    x, t, ctx, cond = inputs
    with torch.no_grad():
        return dit(x, t, t, cond, ctx)


@pytest.fixture(autouse=True)
def _posterior_mean(monkeypatch):
    from diffusers.models.autoencoders import autoencoder_oobleck

    monkeypatch.setattr(autoencoder_oobleck.OobleckDiagonalGaussianDistribution, "sample",
                        lambda self, generator=None: self.mean)


@pytest.mark.parametrize("width,layers", [(32, 2), (128, 4)], ids=["tiny", "mid"])
def test_peft_lora_whole_pipeline_matches_diffusers(tmp_path, width, layers):
    from diffusers import AceStepPipeline

    folder = _diffusers_folder(tmp_path, width, layers)
    theirs, ours = AceStepPipeline.from_pretrained(folder).to(torch.float32), load_pipeline(folder)
    _peft_adapter(ours.dit, tmp_path / "a", rank=4, alpha=8, seed=1)
    _peft_adapter(ours.dit, tmp_path / "b", rank=8, alpha=4, seed=2, target_modules=["q_proj", "o_proj"])
    kw = dict(prompt="bright synth pop", lyrics="[verse]\nhello world", audio_duration=2.0, num_inference_steps=2,
              latents=torch.randn(1, 50, 64, generator=torch.Generator().manual_seed(3)), output_type="latent")
    base = ours(compat="diffusers", **kw).latents
    for name in ("a", "b"):  # diffusers reads no alpha from a PEFT file: its weight carries alpha / r
        theirs.load_lora_weights(str(tmp_path / name), weight_name="adapter_model.safetensors", adapter_name=name)
        ours.load_adapter(tmp_path / name)
    theirs.set_adapters(["a", "b"], [2.0 * 1.0, 0.5 * 0.5])
    ours.set_adapters(["a", "b"], weights=[1.0, 0.5])
    ref = theirs(return_dict=False, **kw)[0]
    out = ours(compat="diffusers", **kw).latents
    assert rel(ref, base) > 0.05  # the adapters change the result
    assert rel(out, ref) <= 1e-4


def test_dit_matches_peft_and_diffusers_file_layout(tmp_path, demo):
    pipe = demo
    reference = _peft_adapter(pipe.dit, tmp_path / "peft", rank=4, alpha=16, seed=0).get_base_model()
    inputs = _dit_inputs(batch=2)
    x, t, ctx, cond = inputs
    ref = _run(reference, inputs)
    pipe.load_adapter(tmp_path / "peft", name="peft")
    out = _run(pipe.dit, inputs)  # condition K/V projected inside
    with torch.no_grad():
        kv_out = pipe.dit(x, t, t, None, ctx, cross_kv=pipe.dit.prepare_condition(cond))  # the sampler's path
    assert rel(ref, _run(load_pipeline(demo_checkpoint()).dit, inputs)) > 0.05
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(kv_out, ref, rtol=0, atol=1e-5)
    # The same adapter in diffusers' own layout (its module names, alpha in the file header).
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(reference)
    names = {".q_proj.": ".to_q.", ".k_proj.": ".to_k.", ".v_proj.": ".to_v.", ".o_proj.": ".to_out.0."}
    theirs = {}
    for key, value in state.items():
        for a, b in names.items():
            key = key.replace(a, b)
        theirs["transformer." + key.removeprefix("base_model.model.")] = value.contiguous()
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 16})}
    (tmp_path / "d").mkdir()
    save_file(theirs, tmp_path / "d" / "pytorch_lora_weights.safetensors", metadata=meta)
    pipe.set_adapters([])
    pipe.load_adapter(tmp_path / "d")
    torch.testing.assert_close(_run(pipe.dit, inputs), ref, rtol=0, atol=1e-5)


# --- LoKr -------------------------------------------------------------------------------------------------------

def _split(n):
    m = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)
    return m, n // m


def _lokr_file(dit, path, layout, rank, alpha, seed, extra=None):
    """A LyCORIS LoKr file for every attention projection; returns {path: (W1, W2, scale)} of the formula."""
    gen = torch.Generator().manual_seed(seed)
    tensors, expected = {}, {}
    for name, module in adapters.target_modules(dit).items():
        (out_l, out_k), (in_m, in_n) = _split(module.out_features), _split(module.in_features)
        key = "lycoris_" + name.replace(".", "_")
        sides = []
        for side, rows, cols in (("1", out_l, in_m), ("2", out_k, in_n)):
            if side in layout:  # rank-decomposed side: w_a [rows, r] @ w_b [r, cols]
                a, b = torch.randn(rows, rank, generator=gen), torch.randn(rank, cols, generator=gen) / rank
                tensors[f"{key}.lokr_w{side}_a"], tensors[f"{key}.lokr_w{side}_b"] = a, b
                sides.append(a @ b)
            else:
                tensors[f"{key}.lokr_w{side}"] = torch.randn(rows, cols, generator=gen)
                sides.append(tensors[f"{key}.lokr_w{side}"])
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
        expected[name] = (*sides, alpha / rank if layout else 1.0)
    tensors.update(extra or {})
    config = {"linear_dim": rank, "linear_alpha": alpha, "factor": -1, "decompose_both": layout == "12",
              "rs_lora": False, "weight_decompose": False}
    save_file(tensors, path, metadata={"algo": "lokr", "format": "lycoris", "lokr_config": json.dumps(config)})
    return expected


@pytest.mark.parametrize("layout", ["2", "12", ""], ids=["w1-full_w2-decomposed", "both-decomposed", "both-full"])
def test_lokr_matches_the_official_unmerged_formula(tmp_path, demo, layout):
    pipe = demo
    reference = copy.deepcopy(pipe.dit)
    # The official trainer's network also holds frozen, zero-initialised entries for other DiT modules.
    frozen = {"lycoris_layers_0_mlp_gate_proj.lokr_w1": torch.randn(4, 4),
              "lycoris_layers_0_mlp_gate_proj.lokr_w2": torch.zeros(16, 8),
              "lycoris_proj_in_1.lokr_w1": torch.randn(8, 8), "lycoris_proj_in_1.lokr_w2": torch.zeros(4, 24, 2)}
    expected = _lokr_file(pipe.dit, tmp_path / "lokr_weights.safetensors", layout, rank=2, alpha=3, seed=0,
                          extra=frozen)
    multiplier = 0.7
    with torch.no_grad():  # the formula by hand: W + m * scale * kron(W1, W2)
        for name, module in adapters.target_modules(reference).items():
            w1, w2, scale = expected[name]
            module.weight += multiplier * scale * torch.kron(w1, w2)
    inputs = _dit_inputs(seed=1, frames=40, tokens=9)
    base = _run(pipe.dit, inputs)
    pipe.load_adapter(tmp_path, scale=multiplier)
    ref = _run(reference, inputs)
    assert rel(ref, base) > 0.05
    torch.testing.assert_close(_run(pipe.dit, inputs), ref, rtol=1e-5, atol=1e-5)
    if layout == "2":  # the whole pipeline (LyCORIS' default layout): adapter vs hand-merged weights
        kw = dict(prompt="lofi", audio_duration=6.0, num_inference_steps=2, seed=0, output_type="latent")
        out = pipe(**kw).latents
        pipe.dit, unmerged = reference, pipe.dit
        try:
            assert rel(out, pipe(**kw).latents) <= 1e-4
        finally:
            pipe.dit = unmerged


def test_lokr_strict_errors(tmp_path, demo):
    pipe = demo
    file = tmp_path / "x.safetensors"
    bad = {"lycoris_layers_0_mlp_up_proj.lokr_w1": torch.ones(4, 4),
           "lycoris_layers_0_mlp_up_proj.lokr_w2": torch.ones(16, 8)}
    _lokr_file(pipe.dit, file, "2", 2, 2, 0, extra=bad)
    with pytest.raises(CheckpointError, match="lycoris_layers_0_mlp_up_proj.*not an attention projection"):
        pipe.load_adapter(file)
    _lokr_file(pipe.dit, file, "2", 2, 2, 0, extra={"lycoris_layers_9_self_attn_q_proj.lokr_w1": torch.ones(1, 1)})
    with pytest.raises(CheckpointError, match="lycoris_layers_9_self_attn_q_proj"):
        pipe.load_adapter(file)
    _lokr_file(pipe.dit, file, "2", 2, 2, 0, extra={"lycoris_layers_0_self_attn_q_proj.dora_scale": torch.ones(32, 1)})
    with pytest.raises(CheckpointError, match="layers_0_self_attn_q_proj.dora_scale.*not supported"):
        pipe.load_adapter(file)
    _lokr_file(pipe.dit, file, "2", 2, 2, 0, extra={"lycoris_layers_1_cross_attn_k_proj.lokr_w2_b": torch.ones(3, 4)})
    with pytest.raises(CheckpointError, match="layers_1_cross_attn_k_proj"):
        pipe.load_adapter(file)
    save_file({"lycoris_layers_0_self_attn_q_proj.lokr_w1": torch.ones(4, 4),
               "lycoris_layers_0_self_attn_q_proj.lokr_w2": torch.ones(8, 8)}, file,
              metadata={"lokr_config": json.dumps({"rs_lora": True})})
    with pytest.raises(CheckpointError, match="rs_lora"):
        pipe.load_adapter(file)
    save_file({"lycoris_layers_0_self_attn_q_proj.lokr_w1": torch.ones(4, 4),
               "lycoris_layers_0_self_attn_q_proj.lokr_w2": torch.ones(8, 4)}, file)
    with pytest.raises(CheckpointError, match=r"layers_0_self_attn_q_proj.*\[32, 16\].*\[32, 32\]"):
        pipe.load_adapter(file)


# --- LoRA strictness and the manager ------------------------------------------------------------------------------

def _write_peft(folder, tensors, **config):
    folder.mkdir(exist_ok=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}))


def _lora_tensors(path="layers.0.self_attn.q_proj", rank=2, shape=(32, 32)):
    key = f"base_model.model.{path}"
    return {f"{key}.lora_A.weight": torch.ones(rank, shape[1]), f"{key}.lora_B.weight": torch.ones(shape[0], rank)}


@pytest.mark.parametrize("tensors,config,match", [
    (_lora_tensors("layers.5.self_attn.q_proj"), {}, r"layers\.5\.self_attn\.q_proj.*adapts no target"),
    (_lora_tensors("layers.0.mlp.up_proj"), {}, r"layers\.0\.mlp\.up_proj.*adapts no target"),
    (_lora_tensors(rank=3), {}, r"layers\.0\.self_attn\.q_proj.*rank 3.*r=2"),
    (_lora_tensors(shape=(32, 16)), {}, r"layers\.0\.self_attn\.q_proj: lora_A \[2, 16\]"),
    (_lora_tensors(), {"use_dora": True}, "use_dora"),
    (_lora_tensors(), {"use_rslora": True}, "use_rslora"),
    ({**_lora_tensors(), "base_model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.ones(32)}, {},
     "lora_magnitude_vector.*DoRA"),
    ({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 32)}, {}, "lora_B.weight is missing"),
    (_lora_tensors(), {"peft_type": "LOHA"}, "peft_type"),
], ids=["layer", "module", "rank", "shape", "dora", "rslora", "dora-key", "half", "type"])
def test_lora_strict_errors(tmp_path, demo, tensors, config, match):
    pipe = demo
    _write_peft(tmp_path / "a", tensors, **config)
    with pytest.raises(CheckpointError, match=match):
        pipe.load_adapter(tmp_path / "a")
    assert adapters.manager(pipe.dit).adapters == {}


def test_manager_disable_fuse_unload_and_argument_errors(tmp_path, demo):
    pipe, inputs = demo, _dit_inputs(seed=3, batch=2)
    base = _run(pipe.dit, inputs)
    weights = {k: (v.data_ptr(), v.clone()) for k, v in pipe.dit.state_dict().items()}
    _peft_adapter(pipe.dit, tmp_path / "a", rank=4, alpha=8, seed=0)
    _peft_adapter(pipe.dit, tmp_path / "b", rank=2, alpha=2, seed=1)
    assert pipe.load_adapter(tmp_path / "a") == "a" and pipe.load_adapter(tmp_path / "b", scale=0.5) == "b"
    both = _run(pipe.dit, inputs)
    pipe.set_adapters("a")
    only_a = _run(pipe.dit, inputs)
    assert rel(both, base) > 0.01 and rel(only_a, both) > 1e-3
    pipe.set_adapters(["a", "b"], [1.0, 0.5])
    assert torch.equal(_run(pipe.dit, inputs), both)  # loading activated "b" with its scale
    pipe.disable_adapters()
    assert torch.equal(_run(pipe.dit, inputs), base)  # bitwise the base model, adapters still loaded
    pipe.set_adapters(["a", "b"], [1.0, 0.5])
    pipe.fuse_adapters()
    assert rel(_run(pipe.dit, inputs), both) < 1e-5
    pipe.unfuse_adapters()
    for k, v in pipe.dit.state_dict().items():  # the exact base tensors, same storage: nothing was copied
        assert v.data_ptr() == weights[k][0] and torch.equal(v, weights[k][1]), k
    pipe.fuse_adapters()
    pipe.unload_adapter("b")  # any change unfuses first
    assert all(torch.equal(v, weights[k][1]) for k, v in pipe.dit.state_dict().items())
    assert torch.equal(_run(pipe.dit, inputs), only_a)
    kw = dict(prompt="ambient", audio_duration=6.0, num_inference_steps=2, seed=3, output_type="latent")
    with_a = pipe(**kw).latents  # the pipeline's sampler path sees the adapter
    with pytest.raises(ValueError, match="already loaded"):
        pipe.load_adapter(tmp_path / "a")
    with pytest.raises(ValueError, match="names: no adapter called 'zz'"):
        pipe.set_adapters(["a", "zz"])
    with pytest.raises(ValueError, match="weights: 1 given for 2"):
        pipe.set_adapters(["a", "a"], [1.0])
    with pytest.raises(ValueError, match="scale must be a finite number"):
        pipe.load_adapter(tmp_path / "b", scale=float("nan"))
    with pytest.raises(CheckpointError, match="adapter path not found"):
        pipe.load_adapter(tmp_path / "nope")
    pipe.unload_adapter("a")
    assert not any(m._forward_hooks for m in pipe.dit.modules())  # no adapter: no hook, no overhead
    assert torch.equal(_run(pipe.dit, inputs), base)
    assert rel(pipe(**kw).latents, with_a) > 1e-3


def test_fuse_restores_bitwise_under_fp32_compute_of_bf16_weights(tmp_path, demo):
    """bf16 weights read as fp32 (precision.py's mode for CPUs without bf16): the stored bf16 tensors come back."""
    from acestep_core.precision import store_low_compute_fp32

    _peft_adapter(demo.dit, tmp_path / "a", rank=4, alpha=8, seed=0)
    dit = store_low_compute_fp32(copy.deepcopy(demo.dit), torch.bfloat16)
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    mgr, inputs = adapters.manager(dit), _dit_inputs()
    mgr.load(tmp_path / "a")
    unmerged = _run(dit, inputs)
    mgr.fuse()
    assert rel(_run(dit, inputs), unmerged) < 2e-2  # the fused delta is rounded to bf16 once
    mgr.unfuse()
    after = dit.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())


def test_rank64_costs_under_10_percent_of_a_real_width_dit_step():
    """Counted FLOPs of one sampler step (10 s, condition K/V prepared) at the real DiT width, 2 of its layers."""
    from torch.utils.flop_counter import FlopCounterMode

    from acestep_core.convert import configs

    official = json.loads((FIX / "keys" / "official_turbo_keys.json").read_text())["config"]
    real = configs.acestep_from_official(dict(official), "official_turbo_keys.json")[0]
    assert real.hidden_size == 2048 and real.num_layers == 24
    with torch.device("meta"):
        dit = DiT(dataclasses.replace(real, layer_types=("sliding", "full")))
    x, ctx = torch.empty(1, 250, 64, device="meta"), torch.empty(1, 250, 128, device="meta")
    kv = dit.prepare_condition(torch.empty(1, 365, real.condition_dim, device="meta"))
    t = torch.ones(1, device="meta")

    def flops():
        with FlopCounterMode(display=False) as counter:
            dit(x, t, t, None, ctx, cross_kv=kv)
        return counter.get_total_flops()

    base = flops()
    adapters.manager(dit).add("r64", adapters.new_lora(dit, 64, 128))
    assert flops() / base < 1.10


def test_library_imports_no_peft_or_lycoris():
    check = ("import importlib, pkgutil, sys, acestep_core\n"
             "[importlib.import_module(m.name) for m in pkgutil.iter_modules(acestep_core.__path__, 'acestep_core.')"
             " if not m.name.endswith('__main__')]\n"
             "print(','.join(sorted(n for n in sys.modules if n.split('.')[0] in ('peft', 'lycoris'))))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_safetensors_header_length_with_low_byte_0x80_is_not_a_pickle(tmp_path):
    """A header of 128 + 256 k bytes starts the file with 0x80, pickle's first byte (found by a PEFT adapter)."""
    from acestep_core.safetensors_io import read_safetensors

    for pad in range(300):
        save_file({"w": torch.ones(2)}, tmp_path / "x.safetensors", metadata={"p": "x" * pad})
        if (tmp_path / "x.safetensors").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "x.safetensors").read_bytes()[0] == 0x80
    assert torch.equal(read_safetensors(tmp_path / "x.safetensors")["w"], torch.ones(2))
