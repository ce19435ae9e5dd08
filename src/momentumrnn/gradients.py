"""How gradients travel through time: per-step norms of dL/dh_t and dL/dx_t.

For a loss L on a recurrent layer's outputs, ``gradient_norms`` measures, for every time
step t, the norm of

* ``dL/dh_t``: the total derivative of L with respect to the (top layer's) hidden state
  at step t, through every later step: the quantity whose vanishing the paper studies;
* ``dL/dx_t``: the derivative with respect to the input at step t, which also includes
  paths that bypass the recurrence (for the momentum rules v_t depends on inputs only).

It works with this library's layers and with ``torch.nn.RNN``/``LSTM``/``GRU``: the
layer is unrolled one step per call with its state carried (exact for both), and a zero
tensor added to each h_t gives ``dL/dh_t`` as its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .layers import RecurrentLayer

__all__ = ["GradientNorms", "gradient_norms"]


@dataclass
class GradientNorms:
    """Per-example gradient norms, ``hidden`` and ``input`` each ``(T, examples)``."""

    hidden: Tensor
    input: Tensor

    @property
    def hidden_mean(self) -> Tensor:
        return self.hidden.mean(1)

    @property
    def hidden_std(self) -> Tensor:
        return self.hidden.std(1, unbiased=False)

    @property
    def input_mean(self) -> Tensor:
        return self.input.mean(1)

    @property
    def input_std(self) -> Tensor:
        return self.input.std(1, unbiased=False)

    def first_to_last(self, which: str = "hidden") -> float:
        """``mean norm at the first step / mean norm at the last step`` (small = vanishing)."""
        mean = self.hidden_mean if which == "hidden" else self.input_mean
        return float(mean[0] / mean[-1])

    @staticmethod
    def cat(measurements: list["GradientNorms"]) -> "GradientNorms":
        """Pool the examples of several measurements (e.g. batches) of the same length."""
        return GradientNorms(torch.cat([m.hidden for m in measurements], 1),
                             torch.cat([m.input for m in measurements], 1))

    def to_dict(self) -> dict:
        return {"examples": self.hidden.size(1),
                **{name: getattr(self, name).tolist() for name in ("hidden_mean", "hidden_std", "input_mean", "input_std")},
                "first_to_last_hidden": self.first_to_last("hidden"),
                "first_to_last_input": self.first_to_last("input")}


def gradient_norms(layer: nn.Module, inputs: Tensor, loss_fn: Callable[[Tensor], Tensor], hx=None) -> GradientNorms:
    """Measure ``||dL/dh_t||`` and ``||dL/dx_t||`` per example, for every step t.

    ``layer`` is a unidirectional layer of this library or of ``torch.nn``; ``inputs`` a
    batched tensor laid out as the layer expects (``batch_first`` respected);
    ``loss_fn(outputs)`` maps the layer's outputs (same layout as the layer returns) to
    a scalar loss. Parameters keep their gradients untouched (``autograd.grad`` is used).
    """
    if getattr(layer, "bidirectional", False):
        raise ValueError("gradient_norms needs a unidirectional layer: a bidirectional one has no single time order")
    if not isinstance(inputs, Tensor) or inputs.dim() != 3:
        raise ValueError(f"inputs must be a batched 3-D tensor, got {getattr(inputs, 'shape', type(inputs).__name__)}")
    time_dim = 1 if getattr(layer, "batch_first", False) else 0
    ours = isinstance(layer, RecurrentLayer)
    x = inputs.detach().clone().requires_grad_(True)
    rule_state, outputs, probes = None, [], []
    for t in range(x.size(time_dim)):
        x_t = x.narrow(time_dim, t, 1)
        if ours:
            out, hx, rule_state = layer(x_t, hx, rule_state=rule_state, return_rule_state=True)
        else:
            out, hx = layer(x_t, hx)
        probe = torch.zeros_like(out, requires_grad=True)     # d L / d probe = d L / d h_t
        out = out + probe
        top = out.select(time_dim, 0)                         # (batch, hidden) of the top layer
        if isinstance(hx, tuple):
            hx = (_replace_top(hx[0], top), hx[1])
        else:
            hx = _replace_top(hx, top)
        outputs.append(out)
        probes.append(probe)
    loss = loss_fn(torch.cat(outputs, dim=time_dim))
    grads = torch.autograd.grad(loss, [x, *probes], allow_unused=True)
    input_norms = grads[0].norm(dim=-1)                       # (T, batch) or (batch, T)
    if time_dim == 1:
        input_norms = input_norms.T
    hidden_norms = torch.stack([
        (g if g is not None else torch.zeros_like(p)).squeeze(time_dim).norm(dim=-1) for g, p in zip(grads[1:], probes)
    ])                                                        # (T, batch)
    return GradientNorms(hidden_norms.detach(), input_norms.detach())


def _replace_top(h_n: Tensor, top: Tensor) -> Tensor:
    """``h_n`` (num_layers, batch, hidden) with its last layer replaced by ``top``."""
    return torch.cat([h_n[:-1], top.unsqueeze(0)], dim=0)
