"""weights_convert --to diffusers: the folder loads in diffusers, maps back exactly and reproduces our models."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from acestep_core.config import load_config  # noqa: E402
from acestep_core.loading import expected_shapes, load_checkpoint  # noqa: E402
from acestep_core.safetensors_io import CheckpointError, read_safetensors  # noqa: E402
from acestep_core.text import TextTokenizer  # noqa: E402
from acestep_core.convert import configs, keymaps  # noqa: E402
from acestep_core.convert.cli import main  # noqa: E402
from acestep_core.convert.convert import (  # noqa: E402
    DIFFUSERS_FOLDERS,
    COMPONENTS,
    Converted,
    convert_checkpoint,
    convert_component,
)
from acestep_core.convert.to_diffusers import (  # noqa: E402
    DIFFUSERS_SILENCE_FRAMES,
    audio_detokenizer_config,
    audio_tokenizer_config,
    condition_encoder_config,
    diffusers_state_dicts,
    text_encoder_config,
    invert_table,
    transformer_config,
    write_diffusers,
)
from acestep_core.convert.transforms import fold_weight_norm, unfold_weight_norm  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
KEYS = FIX / "keys"
OFFICIAL = FIX / "official_tiny_turbo" / "checkpoints"
REF = FIX / "official_tiny_turbo" / "reference"

# Pipeline attribute of each of our components.
ATTR = {"dit": "transformer", "condition": "condition_encoder", "audio_tokenizer": "audio_tokenizer",
        "audio_detokenizer": "audio_token_detokenizer", "vae": "vae", "text_encoder": "text_encoder"}


def _cli(*args):
    """The CLI in this process (a subprocess costs seconds of imports); -> (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def _tiled(silence):
    reps = -(-DIFFUSERS_SILENCE_FRAMES // silence.shape[1])
    return silence.repeat(1, reps, 1)[:, :DIFFUSERS_SILENCE_FRAMES]


@pytest.fixture(scope="module")
def official():
    return convert_checkpoint(str(OFFICIAL))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """official -> diffusers (CLI), official -> ours (CLI), that diffusers folder -> ours (CLI)."""
    root = tmp_path_factory.mktemp("to_diffusers")
    for args in ((OFFICIAL, root / "diff", "--to", "diffusers"), (OFFICIAL, root / "ours"),
                 (root / "diff", root / "ours_via_diff")):
        rc, _, err = _cli(*args)
        assert rc == 0, err
    return root


@pytest.fixture(scope="module")
def pipe(folders):
    return diffusers.AceStepPipeline.from_pretrained(folders / "diff")


# --- 1. official -> diffusers: loads, every file equals what the diffusers classes hold, maps back ----------

def test_files_match_the_diffusers_classes(folders, pipe):
    """Key sets and shapes come from the diffusers / transformers modules themselves (this is where the
    VAE's weight-norm keys are checked: every conv, conv_t and the bias-free last decoder conv)."""
    for name in COMPONENTS:
        folder, stem = DIFFUSERS_FOLDERS[name]
        written = read_safetensors(folders / "diff" / folder / f"{stem}.safetensors")
        module_sd = getattr(pipe, ATTR[name]).state_dict()
        shapes = {k: tuple(v.shape) for k, v in module_sd.items()}
        assert {k: tuple(v.shape) for k, v in written.items()} == shapes, name
        for key, tensor in written.items():
            assert torch.equal(module_sd[key], tensor), f"{name}: {key} was not loaded as written"
    vae_keys = pipe.vae.state_dict().keys()
    assert not any(k.endswith(".weight") for k in vae_keys)
    assert "decoder.conv2.weight_g" in vae_keys and "decoder.conv2.bias" not in vae_keys
    assert any(".conv_t1.weight_g" in k for k in vae_keys)


def test_diffusers_components_map_back_to_the_official_tensors(pipe, official):
    for name in COMPONENTS:
        back = convert_component(getattr(pipe, ATTR[name]).state_dict(), "diffusers", name)
        ref = official.components[name]
        assert back.keys() == ref.keys(), name
        for key, tensor in ref.items():
            if name == "vae":  # weight norm unfolded then folded again: equal up to float rounding
                torch.testing.assert_close(back[key], tensor, rtol=1e-6, atol=1e-6, msg=f"vae {key}")
            else:
                assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), f"{name}: {key}"
    silence = pipe.condition_encoder.silence_latent
    assert torch.equal(silence, _tiled(official.silence_latent))
    assert torch.equal(silence[:, : official.silence_latent.shape[1]], official.silence_latent)


def test_pipeline_settings(pipe, official):
    assert pipe.is_turbo
    assert pipe.scheduler.config.num_train_timesteps == 1 and pipe.scheduler.config.shift == 1.0
    tok = pipe.tokenizer
    # The written tokenizer_config keeps the source's padding side (issue 13: compat="diffusers" reads it).
    assert tok.pad_token_id == official.config.pipeline.pad_token_id
    assert tok.padding_side == official.config.pipeline.padding_side
    ours = TextTokenizer(official.tokenizer_json)
    strings = json.loads((REF / "strings.json").read_text())
    texts = [strings["text2music_prompt"], strings["text2music_lyrics_text"], "la"]
    batch = tok(texts, padding="longest", truncation=True, max_length=256, return_tensors="pt")
    ids, mask = ours.batch(texts, 256, padding_side=tok.padding_side)
    assert torch.equal(batch.input_ids, ids) and torch.equal(batch.attention_mask, mask)


def test_configs_parse_back_and_equal_what_diffusers_saves(folders, pipe, official, tmp_path):
    # What diffusers' own save_pretrained writes from the loaded pipeline converts to the same checkpoint.
    pipe.save_pretrained(tmp_path / "resaved")
    index = json.loads((folders / "diff" / "model_index.json").read_text())
    resaved = json.loads((tmp_path / "resaved" / "model_index.json").read_text())
    for key, value in index.items():
        if key not in ("_diffusers_version", "tokenizer"):  # transformers 5 names its fast tokenizer class anew
            assert resaved[key] == value, key
    again = convert_checkpoint(str(tmp_path / "resaved"))
    assert again.config == official.config
    assert load_config(folders / "ours") == official.config == load_config(folders / "ours_via_diff")


# --- 2. round trip: official -> ours equals official -> diffusers -> ours ------------------------------------

def test_round_trip_through_diffusers_gives_our_tensors(folders):
    direct, via = folders / "ours", folders / "ours_via_diff"
    for name in COMPONENTS:
        a, b = read_safetensors(direct / f"{name}.safetensors"), read_safetensors(via / f"{name}.safetensors")
        assert a.keys() == b.keys(), name
        for key in a:
            if name == "vae":
                torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-6, msg=f"vae {key}")
            else:
                assert torch.equal(a[key], b[key]), f"{name}: {key}"
    s_direct = read_safetensors(direct / "silence_latent.safetensors")["silence_latent"]
    s_via = read_safetensors(via / "silence_latent.safetensors")["silence_latent"]
    # The fixture's 1500 frames come back tiled to the 15000 frames diffusers holds.
    assert torch.equal(s_via, _tiled(s_direct))
    assert (direct / "tokenizer.json").read_bytes() == (via / "tokenizer.json").read_bytes()


def test_full_length_silence_round_trips_exactly_and_dtype_applies(official, tmp_path):
    silence = torch.randn(1, DIFFUSERS_SILENCE_FRAMES, 64)
    conv = Converted(official.config, official.components, silence, official.tokenizer_json, "test")
    write_diffusers(conv, tmp_path / "d", dtype="bf16")
    back = convert_checkpoint(str(tmp_path / "d"))
    assert torch.equal(back.silence_latent, silence)  # kept at its source precision
    for name in COMPONENTS:
        for key, tensor in official.components[name].items():
            want = tensor.to(torch.bfloat16)
            if name == "vae":
                torch.testing.assert_close(back.components[name][key], want, rtol=1e-2, atol=1e-3)
            else:
                assert torch.equal(back.components[name][key], want), f"{name}: {key}"


# --- 3. the diffusers models compute what ours do ------------------------------------------------------------

@pytest.fixture(scope="module")
def ours(folders):
    return load_checkpoint(folders / "ours")


def test_diffusers_transformer_equals_our_dit(pipe, ours):
    torch.manual_seed(0)
    b, t, enc_len = 2, 41, 13  # odd T: both pad to the patch size and crop back
    x = torch.randn(b, t, 64)
    context = torch.randn(b, t, 128)
    enc = torch.randn(b, enc_len, 48)
    ts = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        want = ours.modules["dit"](x, ts, ts, enc, context)
        got = pipe.transformer(hidden_states=x, timestep=ts, timestep_r=ts, encoder_hidden_states=enc,
                               context_latents=context, return_dict=False)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_diffusers_encoders_equal_ours(pipe, ours):
    """The text, condition and audio-token models: their configs (layer types, windows, rope) came through."""
    ref = read_safetensors(REF / "condition_encoder.safetensors")
    text = read_safetensors(REF / "text_encoder.safetensors")
    torch.manual_seed(0)
    latents = torch.randn(2, 23, 64)
    with torch.no_grad():
        torch.testing.assert_close(pipe.text_encoder(input_ids=text["text_token_ids"]).last_hidden_state,
                                   ours.modules["text_encoder"](text["text_token_ids"]), rtol=1e-5, atol=1e-5)
        args = (ref["text_hidden_states"], ref["text_attention_mask"], ref["lyric_hidden_states"],
                ref["lyric_attention_mask"], ref["refer_audio_acoustic_hidden_states_packed"],
                ref["refer_audio_order_mask"])
        got, got_mask = pipe.condition_encoder(*args)
        want, want_mask = ours.modules["condition"](*args)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(got_mask.bool(), want_mask)
        quantized, codes, _ = ours.modules["audio_tokenizer"].tokenize(latents, ours.silence_latent)
        got_q, got_codes = pipe.audio_tokenizer.tokenize(latents, pipe.condition_encoder.silence_latent)
        torch.testing.assert_close(got_q, quantized, rtol=1e-5, atol=1e-5)
        assert torch.equal(got_codes.reshape(codes.shape), codes)
        torch.testing.assert_close(pipe.audio_token_detokenizer(quantized),
                                   ours.modules["audio_detokenizer"](quantized), rtol=1e-5, atol=1e-5)


# --- 4. the CLI ----------------------------------------------------------------------------------------------

def test_cli_from_our_layout_and_refuses_overwrite(folders, tmp_path):
    dst = tmp_path / "d"
    rc, out, err = _cli(folders / "ours", dst, "--to", "diffusers")
    assert rc == 0, err
    assert "diffusers layout" in out
    for name in COMPONENTS:  # ours -> diffusers writes the same files as official -> diffusers
        folder, stem = DIFFUSERS_FOLDERS[name]
        a = read_safetensors(dst / folder / f"{stem}.safetensors")
        b = read_safetensors(folders / "diff" / folder / f"{stem}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    before = sorted(p.name for p in dst.iterdir())
    # The real entry point, once: one error line, exit status 1, the folder untouched.
    r = subprocess.run([sys.executable, "-m", "weights_convert", str(folders / "ours"), str(dst), "--to", "diffusers"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    assert sorted(p.name for p in dst.iterdir()) == before
    rc, _, err = _cli(folders / "ours", dst, "--to", "diffusers", "--force", "--dtype", "fp16")
    assert rc == 0, err
    assert read_safetensors(dst / "transformer" / "diffusion_pytorch_model.safetensors")["norm_out.weight"].dtype \
        == torch.float16
    with pytest.raises(CheckpointError, match="already exists"):
        write_diffusers(folders / "ours", dst)


def test_cli_error_leaves_nothing(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    rc, _, err = _cli(bad, tmp_path / "out", "--to", "diffusers")
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


# --- the inverse tables and configs at real size (meta tensors, no weights) ----------------------------------

def test_inverse_tables_invert():
    for name, table in keymaps.DIFFUSERS.items():
        twice = invert_table(invert_table(table))
        assert twice == [(s, d) for s, d in table if d is not None], name
    for table in (keymaps.TRANSFORMERS_QWEN3, keymaps.OOBLECK):
        assert invert_table(table) == [("re:^(.+)$", "\\1")]
    with pytest.raises(ValueError, match="regex"):
        invert_table([("re:^a(.*)$", "b\\1")])


def test_unfold_weight_norm_inverts_fold():
    torch.manual_seed(0)
    for shape in ((8, 4, 7), (4, 8, 6)):  # a Conv1d and a ConvTranspose1d weight
        w = torch.randn(*shape)
        g, v = unfold_weight_norm(w)
        assert g.shape == (shape[0], 1, 1) and v is w
        torch.testing.assert_close(fold_weight_norm(g, v), w, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="weight"):
        unfold_weight_norm(torch.ones(3))


@pytest.mark.parametrize("variant", ["turbo", "base", "sft", "xl_turbo", "xl_base"])
def test_real_size_configs_build_the_diffusers_classes(variant):
    """Our config -> diffusers configs -> the diffusers classes (on meta): same keys and shapes as our
    tensors renamed by the inverse tables, and the configs read back to the same config."""
    from diffusers.pipelines.ace_step import AceStepAudioTokenDetokenizer, AceStepAudioTokenizer, \
        AceStepConditionEncoder

    data = json.loads((KEYS / f"official_{variant}_keys.json").read_text())
    dit, cond, tok, version = configs.acestep_from_official(data["config"], variant)
    vae_data = json.loads((KEYS / "diffusers_AutoencoderOobleck_acestep_keys.json").read_text())
    vae = configs.oobleck_from_diffusers(vae_data["config"], "vae keys")
    qwen = configs.Qwen3Config(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_layers=28,
                               num_heads=16, num_kv_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6)
    config = configs.assemble(qwen, vae, dit, cond, tok, configs.pipeline_config(version, 151643))
    cfgs = {"dit": transformer_config(config), "condition": condition_encoder_config(config),
            "audio_tokenizer": audio_tokenizer_config(config), "audio_detokenizer": audio_detokenizer_config(config)}
    assert configs.acestep_from_diffusers(cfgs["dit"], cfgs["condition"], cfgs["audio_tokenizer"],
                                          cfgs["audio_detokenizer"], variant) == (dit, cond, tok, version)

    meta = {c: {k: torch.empty(s, device="meta") for k, s in expected_shapes(c, config).items()} for c in COMPONENTS}
    silence = torch.empty(1, DIFFUSERS_SILENCE_FRAMES, 64, device="meta")
    renamed = diffusers_state_dicts(Converted(config, meta, silence, "", "meta"))
    classes = {"dit": diffusers.AceStepTransformer1DModel, "condition": AceStepConditionEncoder,
               "audio_tokenizer": AceStepAudioTokenizer, "audio_detokenizer": AceStepAudioTokenDetokenizer}
    with torch.device("meta"):
        for name, cls in classes.items():
            module = cls(**{k: v for k, v in cfgs[name].items() if not k.startswith("_")})
            assert {k: tuple(v.shape) for k, v in renamed[name].items()} == \
                {k: tuple(v.shape) for k, v in module.state_dict().items()}, name
        assert module.config.hidden_size == config.audio_tokenizer.encoder.hidden_size
        vae_sd = diffusers.AutoencoderOobleck(**{k: v for k, v in vae_data["config"].items()
                                                 if not k.startswith("_")}).state_dict()
        text_sd = transformers.Qwen3Model(transformers.Qwen3Config.from_dict(text_encoder_config(config))).state_dict()
    for name, module_sd in (("vae", vae_sd), ("text_encoder", text_sd)):
        assert {k: tuple(v.shape) for k, v in renamed[name].items()} == \
            {k: tuple(v.shape) for k, v in module_sd.items()}, name
    assert renamed["condition"]["silence_latent"].shape[1] == DIFFUSERS_SILENCE_FRAMES
