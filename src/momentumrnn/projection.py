"""The input drive of all steps, ``u = x W^T + b``, in one GEMM, for the loops.

For narrow inputs on the CPU its backward is autograd's but for the weight gradient's
orientation: ``dW = (x^T g)^T`` with ``x`` (T*B, I) and ``g`` (T*B, G), where autograd's
``linear`` computes ``g^T x``. With 2 <= I < 16 the BLAS of PyTorch's CPU build runs ``g^T x``
2 to 8 times slower (at (T*B, I, G) = (40000, 8, 256), one thread: 71 ms against 8 ms);
at I = 1 and from I = 16 on the two take about the same time, ``g^T x`` up to a fifth less.
The result is the same sum in another order; the gradient is returned contiguous, as torch's.
Measured with ``benchmarks/input_drive.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .custom_backward import first_order, unmaterialized

__all__ = ["input_drive"]


#: Below this many input features (and above one) the weight gradient is taken as (x^T g)^T.
NARROW = 16


def input_drive(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` (T, B, I), with the faster weight gradient."""
    if x.device.type != "cpu" or not 1 < x.size(-1) < NARROW:
        return F.linear(x, weight, bias)
    return _InputDrive.apply(x, weight, bias)


class _InputDrive(torch.autograd.Function):
    @staticmethod
    @unmaterialized
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    @first_order
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        flat = grad.reshape(-1, grad.size(-1))
        d_x = grad.matmul(weight) if ctx.needs_input_grad[0] else None
        d_weight = x.reshape(-1, x.size(-1)).t().mm(flat).t().contiguous() if ctx.needs_input_grad[1] else None
        d_bias = flat.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return d_x, d_weight, d_bias
