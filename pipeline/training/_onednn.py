"""oneDNN linear layers for the CPU: nn.Linear routed through oneDNN's GEMM during training.

nn.Linear on the CPU runs MKL sgemm. MKL picks its fastest kernels on Intel CPUs only; on other
CPUs (the AMD EPYC of ENVIRONMENT.md, AVX-512) oneDNN's float32 GEMM, which dispatches on the
instruction set alone, trained faster, while on an Intel Xeon MKL's was the faster one
(BENCHMARKS.md, "Training engine" and "Fixed costs"; benchmarks/bench_engine.py). So the route
is taken on CPUs that are not Intel's (:func:`onednn_preferred`). During training and
validation every 2-D Linear call is routed through oneDNN's dense-in/dense-out linear
(``torch.ops.mkldnn._linear_pointwise``, the kernel inductor uses on the CPU) with a hand
written backward that is also three oneDNN GEMMs. It is still IEEE float32 (no bf16/tf32), so
results match MKL's to rounding (checked at first use); the module keeps its class and
parameters outside the routed block, so state_dicts, export and packaging never see it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def _onednn_linear_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class _OneDnnLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear_op(x, weight, bias)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_linear_op(grad, weight.t(), None)  # [B,out] @ [out,in]
        if ctx.needs_input_grad[1]:
            grad_w = _onednn_linear_op(grad.t(), x.t(), None)  # [out,B] @ [B,in]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


class _OneDnnLinear(nn.Linear):
    """nn.Linear whose 2-D float32 calls go through :class:`_OneDnnLinearFn`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() == 2 and input.dtype == torch.float32:
            return _OneDnnLinearFn.apply(input, self.weight, self.bias)
        return F.linear(input, self.weight, self.bias)


_ONEDNN_OK: bool | None = None
_CPUINFO = "/proc/cpuinfo"
_INTEL = "GenuineIntel"


def cpu_vendor(cpuinfo: str) -> str | None:
    """The ``vendor_id`` of a ``/proc/cpuinfo`` text (None where it names none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return None


@functools.cache  # one CPU per process
def onednn_preferred() -> bool:
    """Whether the oneDNN route is the faster GEMM on this CPU: everywhere but on Intel's CPUs,
    where MKL runs its own best kernels. A CPU whose vendor cannot be read keeps the route."""
    try:
        with open(_CPUINFO, encoding="utf-8", errors="replace") as f:
            vendor = cpu_vendor(f.read())
    except OSError:
        vendor = None
    return vendor != _INTEL


def onednn_linear_available() -> bool:
    """Whether the oneDNN linear path exists here and agrees with ``F.linear`` (checked once)."""
    global _ONEDNN_OK
    if _ONEDNN_OK is None:
        try:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(8, 5, generator=gen, requires_grad=True)
            w = torch.randn(3, 5, generator=gen, requires_grad=True)
            b = torch.randn(3, generator=gen, requires_grad=True)
            g = torch.randn(8, 3, generator=gen)
            ref = F.linear(x, w, b)
            ref_grads = torch.autograd.grad(ref, (x, w, b), g)
            out = _OneDnnLinearFn.apply(x, w, b)
            grads = torch.autograd.grad(out, (x, w, b), g)
            pairs = [(out, ref), *zip(grads, ref_grads, strict=True)]
            _ONEDNN_OK = all(torch.allclose(a, r, atol=1e-5) for a, r in pairs)
        except (RuntimeError, AttributeError, NotImplementedError) as exc:
            logger.debug("oneDNN linear unavailable: %s", exc)
            _ONEDNN_OK = False
        if not _ONEDNN_OK:
            logger.info("oneDNN linear path unavailable here; nn.Linear uses the default GEMM")
    return _ONEDNN_OK


@contextlib.contextmanager
def routed_linears(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Swap plain nn.Linear modules to the oneDNN path for the duration of the block."""
    swapped = [m for m in model.modules() if type(m) is nn.Linear] if enabled else []
    for m in swapped:
        m.__class__ = _OneDnnLinear
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = nn.Linear
