"""LoRA fine-tuning (acestep_core/train_lora.py, train_data.py) on the tiny demo model.

- The loss of a fixed batch equals the formula computed directly, and the official training_v2 functions
  (timestep sampling, CFG dropout) run on the same seed when the official source is present.
- The learning-rate schedule equals the official SequentialLR(LinearLR, CosineAnnealingLR) step for step.
- 30 steps on a repeated clip lower its loss on a fixed evaluation set of noises and times.
- The adapter written loads through our loader, peft (the official loader's PeftModel.from_pretrained) and
  diffusers' load_lora_weights (alpha from the file header), all giving the same DiT output.
- Bad songs (no caption, unreadable, < 1 s) are reported per file and skipped; a resumed run equals an
  uninterrupted one bitwise; `acestep generate --lora` applies the adapter.
"""

import copy
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from acestep_core import adapters, cli, train_data, train_lora
from acestep_core.demo import demo_checkpoint
from acestep_core.pipeline import load_pipeline
from acestep_core.safetensors_io import read_safetensors, write_safetensors

OFFICIAL = Path("/work/official/acestep/training_v2/timestep_sampling.py")
RATE = 48000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster and immune to a busy machine's thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(demo_checkpoint())


def _clip(path, seconds=3.0, freq=220.0):
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 1.5 * t))
    sf.write(path, np.stack([x, 0.8 * x], 1).astype(np.float32), RATE)


@pytest.fixture(scope="module")
def clip_cache(pipe, tmp_path_factory):
    """One repeated clip, encoded by the trainer's preprocessing, latents standardised per channel.

    The random demo VAE maps any audio (silence too) to latents of std ~50, which the random DiT's output layer
    cannot reach whatever the attention does; standardised latents keep the learnable part of the loss visible.
    """
    root = tmp_path_factory.mktemp("clip")
    _clip(root / "a.wav")
    (root / "a.txt").write_text("warm synth drone\n[verse]\nla la la")
    songs, problems = train_data.discover(str(root))
    files, more, reused = train_data.build_cache(pipe, songs, str(root / "cache"), progress=False)
    assert (len(files), problems, more, reused) == (1, [], [], 0)
    t = read_safetensors(files[0])
    latents = (t["latents"] - t["latents"].mean(0)) / t["latents"].std(0)
    write_safetensors({"latents": latents, "condition": t["condition"]}, root / "clip.safetensors")
    return [str(root / "clip.safetensors")]


def _eval_loss(pipe, files, draws=16):
    batch = train_data.load_batch(files, pipe.silence_latent, device="cpu", dtype=torch.float32)
    null = pipe.condition_encoder.null_condition_emb
    with torch.no_grad():
        return sum(train_lora.flow_matching_loss(pipe.dit, batch, null, torch.Generator().manual_seed(1000 + i),
                                                 cfg_ratio=0.0, mu=-0.4, sigma=1.0).item()
                   for i in range(draws)) / draws


@pytest.fixture(scope="module")
def trained(pipe, clip_cache, tmp_path_factory):
    """30 steps, rank 8, on the repeated clip -> (adapter folder, eval loss before, eval loss after)."""
    out = tmp_path_factory.mktemp("lora")
    before = _eval_loss(pipe, clip_cache)
    config = train_lora.TrainConfig(rank=8, alpha=16, lr=1e-2, steps=30, grad_accum=1, seed=0, save_every=10)
    summary = train_lora.train(pipe, clip_cache, str(out), config, progress=False)
    assert summary["start_step"] == 0 and len(summary["losses"]) == 30
    pipe.load_adapter(out, name="trained")
    after = _eval_loss(pipe, clip_cache)
    pipe.unload_adapter("trained")
    return out, before, after


def test_loss_of_a_fixed_batch_equals_the_formula(pipe, clip_cache):
    torch.manual_seed(0)
    batch = {"x0": torch.randn(4, 20, 64), "context": torch.randn(4, 20, 128), "condition": torch.randn(4, 9, 32)}
    null = pipe.condition_encoder.null_condition_emb
    loss = train_lora.flow_matching_loss(pipe.dit, batch, null, torch.Generator().manual_seed(7), cfg_ratio=0.5,
                                         mu=-0.4, sigma=1.0)
    gen = torch.Generator().manual_seed(7)  # the same draws, in the documented order
    drop = torch.rand(4, generator=gen) < 0.5
    eps = torch.randn(4, 20, 64, generator=gen)
    t1, t2 = (torch.sigmoid(torch.randn(4, generator=gen) - 0.4) for _ in range(2))
    t = torch.maximum(t1, t2)
    assert 0 < int(drop.sum()) < 4  # both branches of the CFG dropout are exercised
    cond = batch["condition"].clone()
    cond[drop] = null[0]  # the whole condition of a dropped song is the null embedding
    tt = t[:, None, None]
    v = pipe.dit(tt * eps + (1 - tt) * batch["x0"], t, t, cond, batch["context"])
    assert torch.equal(loss, ((v - (eps - batch["x0"])) ** 2).mean())
    if OFFICIAL.is_file():  # the official functions on the global RNG seeded alike draw the same numbers
        spec = importlib.util.spec_from_file_location("official_timestep_sampling", OFFICIAL)
        official = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(official)
        torch.manual_seed(7)
        cond_official = official.apply_cfg_dropout(batch["condition"], null, cfg_ratio=0.5)
        eps_official = torch.randn_like(batch["x0"])
        t_official, r_official = official.sample_timesteps(4, "cpu", torch.float32, timestep_mu=-0.4,
                                                           timestep_sigma=1.0)
        assert torch.equal(cond_official, cond) and torch.equal(eps_official, eps)
        assert torch.equal(t_official, t) and torch.equal(r_official, t)


def test_lr_schedule_equals_the_official_schedulers():
    """Official optim.build_scheduler('cosine'): warmup capped at steps // 10, LinearLR(0.1 -> 1), cosine to 1 %."""
    for total, warmup in ((1000, 100), (30, 100), (7, 0), (200, 5)):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([param], lr=1e-4)
        w = min(warmup, max(1, total // 10))
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=w),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - w), eta_min=1e-6)], milestones=[w])
        for step in range(total):
            assert math.isclose(train_lora.lr_at(step, 1e-4, warmup, total), opt.param_groups[0]["lr"],
                                rel_tol=1e-9), (total, step)
            opt.step()
            sched.step()


def test_30_steps_lower_the_loss_on_a_repeated_clip(trained):
    out, before, after = trained
    assert after < 0.97 * before, (before, after)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 31))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000010", "step-000020"]


def test_saved_adapter_round_trips_through_ours_peft_and_diffusers(pipe, trained, tmp_path):
    from diffusers import AceStepPipeline
    from peft import PeftModel

    from _tiny_diffusers import build

    out = trained[0]
    weights = read_safetensors(out / "adapter_model.safetensors")
    assert len(weights) == 2 * 8 * len(pipe.dit.layers)  # lora_A / lora_B of 8 projections per layer, nothing else
    assert all(k.startswith("base_model.model.layers.") and ".lora_" in k for k in weights)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    gen = torch.Generator().manual_seed(0)
    x, ctx, cond, t = (torch.randn(1, 30, 64, generator=gen), torch.randn(1, 30, 128, generator=gen),
                       torch.randn(1, 7, 32, generator=gen), torch.tensor([0.4]))
    with torch.no_grad():
        base = pipe.dit(x, t, t, cond, ctx)
        ref = PeftModel.from_pretrained(copy.deepcopy(pipe.dit), str(out)).get_base_model()(x, t, t, cond, ctx)
        pipe.load_adapter(out, name="trained")
        try:
            ours = pipe.dit(x, t, t, cond, ctx)
        finally:
            pipe.unload_adapter("trained")
    assert ((ref - base).abs().max() / base.abs().max()) > 1e-3
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # diffusers: same widths as the demo DiT; alpha / r comes from the header we write (no weights passed).
    folder = build(tmp_path, "turbo")
    theirs, mine = AceStepPipeline.from_pretrained(folder).to(torch.float32), load_pipeline(folder)
    theirs.load_lora_weights(str(out), weight_name="adapter_model.safetensors", adapter_name="trained")
    mine.load_adapter(out)
    with torch.no_grad():
        d = theirs.transformer(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=cond,
                               context_latents=ctx, return_dict=False)[0]
        torch.testing.assert_close(mine.dit(x, t, t, cond, ctx), d, rtol=0, atol=1e-4)


def test_bad_data_is_reported_per_file_and_skipped(tmp_path, capsys):
    data = tmp_path / "songs"
    data.mkdir()
    _clip(data / "good.wav", seconds=1.5)
    (data / "good.json").write_text(json.dumps({"caption": "solo cello", "bpm": 90, "language": "en"}))
    _clip(data / "short.wav", seconds=0.5)
    (data / "short.txt").write_text("too short")
    _clip(data / "nocaption.wav")
    (data / "broken.wav").write_bytes(b"not audio")
    (data / "broken.txt").write_text("noise")
    (data / "empty.flac").write_bytes(b"")
    (data / "empty.txt").write_text("   ")
    args = ["train-lora", "--checkpoint", demo_checkpoint(), "--data", str(data), "--out", str(tmp_path / "out"),
            "--steps", "1", "--rank", "2", "--grad-accum", "1"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "short.wav: 0.50 s long, shorter than 1 s" in err
    assert "nocaption.wav: no caption (nocaption.json or .txt beside it)" in err
    assert "broken.wav: cannot read this audio file" in err
    assert "empty.flac: no caption" in err
    assert "data: 1 songs ready (0 from the cache), 4 skipped" in err
    assert cli.main(args) == 0  # a rerun reuses the cache
    assert "data: 1 songs ready (1 from the cache), 4 skipped" in capsys.readouterr().err
    jsonl = tmp_path / "songs.jsonl"
    jsonl.write_text('{"audio": "songs/good.wav", "caption": "cello"}\n{"audio": "songs/good.wav"}\nnot json\n'
                     '{"caption": "x"}\n')
    songs, problems = train_data.discover(str(jsonl))
    assert [s.caption for s in songs] == ["cello"] and songs[0].audio == str(tmp_path / "songs" / "good.wav")
    assert [(w.rsplit(":", 1)[1], why.split(" (")[0].split(":")[0]) for w, why in problems] == \
        [("2", "no caption"), ("3", "Expecting value"), ("4", "no 'audio' path")]
    (data / "good.json").unlink()
    assert cli.main(args) == 2
    assert "error: --data: no usable song in" in capsys.readouterr().err


def test_resumed_run_equals_an_uninterrupted_one(pipe, clip_cache, tmp_path):
    config = train_lora.TrainConfig(rank=4, alpha=4, lr=1e-2, steps=4, grad_accum=2, batch_size=2, seed=3,
                                    save_every=2)
    train_lora.train(pipe, clip_cache, str(tmp_path / "a"), config, progress=False)
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-000002", tmp_path / "b" / "checkpoints" / "step-000002")
    summary = train_lora.train(pipe, clip_cache, str(tmp_path / "b"), config, resume=True, progress=False)
    assert summary["start_step"] == 2 and len(summary["losses"]) == 2
    a, b = (read_safetensors(tmp_path / d / "adapter_model.safetensors") for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="rank=4"):
        train_lora.train(pipe, clip_cache, str(tmp_path / "b"),
                         train_lora.TrainConfig(rank=2, steps=4, save_every=2), resume=True, progress=False)


def test_training_changes_only_the_adapter_and_checkpointing_is_exact(pipe, clip_cache, tmp_path):
    before = {k: v.clone() for k, v in pipe.dit.state_dict().items()}
    grads = []
    for checkpointing in (True, False):
        config = train_lora.TrainConfig(rank=4, alpha=8, lr=1e-2, steps=1, grad_accum=1, seed=5,
                                        gradient_checkpointing=checkpointing)
        train_lora.train(pipe, clip_cache, str(tmp_path / str(checkpointing)), config, progress=False)
        grads.append(read_safetensors(tmp_path / str(checkpointing) / "adapter_model.safetensors"))
    assert all(torch.allclose(grads[0][k], grads[1][k], rtol=0, atol=1e-6) for k in grads[0])
    assert all(torch.equal(v, before[k]) for k, v in pipe.dit.state_dict().items())
    assert not any(p.requires_grad or p.grad is not None for p in pipe.dit.parameters())
    assert not adapters.manager(pipe.dit).adapters  # the training adapter is gone


def test_generate_with_lora_flag(trained, tmp_path, capsys):
    out = trained[0]
    common = ["generate", "--prompt", "drone", "--duration", "6", "--steps", "2", "--seed", "1"]
    assert cli.main(common + ["--out", str(tmp_path / "plain.wav")]) == 0
    assert cli.main(common + ["--lora", f"{out}:0.5", "--lora", str(out / "checkpoints" / "step-000010"),
                              "--out", str(tmp_path / "lora.wav")]) == 0
    plain, lora = (sf.read(tmp_path / n)[0] for n in ("plain.wav", "lora.wav"))
    assert np.abs(plain - lora).max() > 1e-6
    assert cli.main(common + ["--lora", f"{out}:x"]) == 2
    assert cli.main(common + ["--lora", str(tmp_path / "missing")]) == 2
    assert "missing not found" in capsys.readouterr().err
