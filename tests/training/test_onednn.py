"""The oneDNN linear path: same results as nn.Linear, and the module class restored after."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.training._onednn import onednn_linear_available, routed_linears


@pytest.mark.skipif(not onednn_linear_available(), reason="no oneDNN linear path here")
def test_onednn_linear_matches_default_gemm() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(12, 20, requires_grad=True)
    ref = net(x).square().sum()
    ref_grads = torch.autograd.grad(ref, [x, *net.parameters()])
    with routed_linears(net, True):
        assert type(net[0]).__name__ == "_OneDnnLinear"
        out = net(x).square().sum()
        grads = torch.autograd.grad(out, [x, *net.parameters()])
    assert type(net[0]) is nn.Linear
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
