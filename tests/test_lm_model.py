"""5 Hz LM forward: logits vs the official fixture (transformers 4.57), live parity with transformers
Qwen3ForCausalLM on random tiny configs (left padding, cached decode), and the static cache."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep_core.lm.checkpoint import load_lm
from acestep_core.lm.config import LMConfig
from acestep_core.lm.model import Qwen3LM

FIX = Path(__file__).parent / "fixtures" / "official_tiny_lm"
LM_DIR = FIX / "checkpoints" / "acestep-5Hz-lm-tiny"
TOL = 1e-5



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's steps are a few microseconds of work each: with several threads every op waits for a
    thread barrier, which on a shared, busy machine costs more than the work (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_lm(LM_DIR)
    return model, load_file(FIX / "reference" / "lm_logits.safetensors")


def test_parameter_names_are_transformers_without_prefix(tiny):
    model, _ = tiny
    names = set(model.state_dict())
    assert "embed_tokens.weight" in names and "norm.weight" in names and "lm_head.weight" not in names
    assert "layers.2.self_attn.q_norm.weight" in names and len(names) == 2 + 11 * model.cfg.num_layers


@torch.inference_mode()
def test_prefill_matches_fixture(tiny):
    model, ref = tiny
    cache = model.new_cache(1, 128)
    h = model.hidden(ref["input_ids"], cache)
    assert (h - ref["prefill_last_hidden_state"]).abs().max() <= TOL
    logits = model.logits(h)  # every position
    assert (logits[..., :554] - ref["prefill_logits_text_vocab"]).abs().max() <= TOL
    assert (logits[:, -1] - ref["prefill_logits_last"]).abs().max() <= TOL
    assert (model.logits(h[:, -1]) - ref["prefill_logits_last"]).abs().max() <= TOL  # last-only head
    assert logits.dtype == torch.float32


@torch.inference_mode()
def test_every_cached_decode_step_matches_fixture(tiny):
    model, ref = tiny
    cache = model.new_cache(1, 128)
    model(ref["input_ids"], cache)
    for t in range(ref["decode_input_ids"].shape[1]):
        logits = model(ref["decode_input_ids"][:, t:t + 1], cache)
        assert (logits - ref["decode_logits"][:, t]).abs().max() <= TOL, t
    assert cache.length == 97 + 5


@torch.inference_mode()
def test_left_padded_cfg_pair_matches_fixture(tiny):
    model, ref = tiny
    ids, mask = ref["cfg_pair_input_ids"], ref["cfg_pair_attention_mask"]
    assert int((mask[1] == 0).sum()) == 54
    cache = model.new_cache(2, 128)
    logits = model(ids, cache, mask)
    assert (logits - ref["cfg_pair_logits_last"]).abs().max() <= TOL


@torch.inference_mode()
def test_code_rows_of_the_head_equal_the_full_head(tiny):
    model, ref = tiny
    cache = model.new_cache(1, 128)
    h = model.hidden(ref["input_ids"], cache)[:, -1]
    full, rows = model.logits(h), model.logits(h, slice(554, 64554))
    assert (rows - full[:, 554:]).abs().max() <= 1e-6


@torch.inference_mode()
def test_static_cache_is_written_in_place(tiny):
    model, ref = tiny
    cache = model.new_cache(2, 110)
    pointers = [k.data_ptr() for k in cache.keys]
    model(ref["cfg_pair_input_ids"], cache, ref["cfg_pair_attention_mask"])
    for _ in range(3):
        model(torch.tensor([[600], [600]]), cache)
    assert [k.data_ptr() for k in cache.keys] == pointers and cache.length == 100
    with pytest.raises(ValueError, match="capacity"):
        model(torch.zeros(2, 11, dtype=torch.long), cache)


def _random_hf(transformers, seed, **cfg):
    torch.manual_seed(seed)
    hf_cfg = transformers.Qwen3Config(tie_word_embeddings=True, rms_norm_eps=1e-6, attn_implementation="sdpa", **cfg)
    hf = transformers.Qwen3ForCausalLM(hf_cfg)
    with torch.no_grad():  # every weight drawn again (norms near 1) so no parameter is a no-op
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    hf.eval()
    ours = Qwen3LM(LMConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
        num_kv_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"], rope_theta=cfg["rope_theta"],
        rms_norm_eps=1e-6))
    ours.load_state_dict({k.removeprefix("model."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"},
                         strict=True)
    return hf, ours.eval()


CONFIGS = [
    dict(vocab_size=301, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, head_dim=16, rope_theta=10000.0),  # heads x head_dim != hidden
    dict(vocab_size=157, hidden_size=24, intermediate_size=64, num_hidden_layers=3, num_attention_heads=3,
         num_key_value_heads=1, head_dim=8, rope_theta=1e6),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@torch.inference_mode()
def test_live_parity_with_transformers_left_padding_and_cached_decode(cfg):
    transformers = pytest.importorskip("transformers")
    hf, ours = _random_hf(transformers, 0, **cfg)
    gen = torch.Generator().manual_seed(1)
    lengths = (11, 6, 9)
    width = max(lengths)
    ids = torch.randint(0, cfg["vocab_size"], (len(lengths), width), generator=gen)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        mask[b, width - n:] = 1
    ids = ids.masked_fill(mask == 0, 0)
    out = hf(input_ids=ids, attention_mask=mask, use_cache=True)
    cache = ours.new_cache(len(lengths), width + 4)
    logits = ours(ids, cache, mask)
    assert (logits - out.logits[:, -1]).abs().max() <= TOL
    past, hf_mask = out.past_key_values, mask
    for step in range(4):  # cached decode: the official loop feeds only the last token and grows the mask
        nxt = torch.randint(0, cfg["vocab_size"], (len(lengths), 1), generator=gen)
        hf_mask = torch.cat([hf_mask, torch.ones_like(nxt)], 1)
        out = hf(input_ids=nxt, attention_mask=hf_mask, cache=past, use_cache=True)
        past = out.past_key_values
        assert (ours(nxt, cache) - out.logits[:, -1]).abs().max() <= TOL, step


@torch.inference_mode()
def test_live_parity_with_transformers_bf16():
    transformers = pytest.importorskip("transformers")
    hf, ours = _random_hf(transformers, 3, **CONFIGS[0])
    hf, ours = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    ids = torch.randint(0, 301, (1, 12), generator=torch.Generator().manual_seed(2))
    ref = hf(input_ids=ids).logits[:, -1].float()
    got = ours(ids, ours.new_cache(1, 12))
    assert got.dtype == torch.float32
    # Same bf16 products; only accumulation order may differ. Scale: logits of a few units.
    assert (got - ref).abs().max() <= 0.05 * ref.abs().max()
