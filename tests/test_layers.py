"""The shared layers' fast paths equal their plain references."""

import pytest
import torch
import torch.nn.functional as F

from acestep_core import layers


@pytest.mark.parametrize("rows,k,n,bias", [(3, 16, 8, True), (600, 64, 96, False), (7, 2048, 3000, False),
                                           (513, 32, 16, True)])
def test_onednn_linear_equals_f_linear(rows, k, n, bias):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k ** 0.5
    b = torch.randn(n, generator=gen) if bias else None
    torch.testing.assert_close(layers.linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    # non-contiguous inputs and other dtypes take F.linear itself
    xt = torch.randn(k, rows, generator=gen).t()
    torch.testing.assert_close(layers.linear(xt, w, b), F.linear(xt, w, b), atol=1e-5, rtol=1e-5)
    xb, wb = x.bfloat16(), w.bfloat16()
    assert torch.equal(layers.linear(xb, wb), F.linear(xb, wb))


def test_linear_module_keeps_nn_linear_keys():
    m = layers.Linear(4, 3)
    assert set(m.state_dict()) == {"weight", "bias"} and isinstance(m, torch.nn.Linear)


def test_banded_mask_equals_dense_attention():
    torch.manual_seed(0)
    att = layers.Attention(64, 4, 2, 16, 1e-6)
    x = torch.randn(2, 300, 64)
    rope = layers.rope_tables(300, 16, 1e6, x.device, x.dtype)
    dense = att(x, rope=rope, mask=layers.additive_mask(300, window=37, dtype=x.dtype, device=x.device))
    band = att(x, rope=rope, mask=layers.banded_mask(300, 37, block=64, dtype=x.dtype, device=x.device))
    torch.testing.assert_close(band, dense, atol=1e-5, rtol=0)
