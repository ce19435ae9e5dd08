"""NT-ASGD: SGD that starts averaging its iterates when validation stops improving.

Merity, Keskar and Socher (2018), *Regularizing and Optimizing LSTM Language Models*:
train with plain SGD; after each validation, if the value is worse than the best of all
values except the last ``nonmono`` ones, switch (once, for good) to averaged SGD: the
same SGD steps, plus a running mean of the parameters over every step since the switch.
Validation, the kept best weights and test use that mean. This is the averaging of
``torch.optim.ASGD`` with ``t0 = 0, lambd = 0`` (a constant step size), written out so
that the switch, the history and the averages live in the optimizer's ``state_dict``
(a resumed run continues exactly).
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["NTASGD"]


class NTASGD(torch.optim.Optimizer):
    """SGD (``lr``, ``weight_decay``) with the non-monotonically triggered switch to
    averaging. Call ``observe(value)`` after each validation (lower is better);
    ``swap_in_average()`` puts the averaged weights into the parameters and returns a
    function that puts the trained ones back (None before the switch)."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, nonmono: int = 5):
        if lr <= 0 or weight_decay < 0 or nonmono < 1:
            raise ValueError(f"NTASGD needs lr > 0, weight_decay >= 0 and nonmono >= 1; got {lr}, {weight_decay}, "
                             f"{nonmono}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        # Kept in the first group so that state_dict() carries them.
        self.param_groups[0].update(nonmono=int(nonmono), history=[], averaging=False, averaged_steps=0)

    @property
    def averaging(self) -> bool:
        return bool(self.param_groups[0]["averaging"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        control = self.param_groups[0]
        if control["averaging"]:
            control["averaged_steps"] += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if group["weight_decay"]:
                    update = update.add(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                if control["averaging"]:
                    state = self.state[p]
                    if "average" not in state or control["averaged_steps"] == 1:
                        state["average"] = p.detach().clone()
                    else:
                        state["average"].add_(p - state["average"], alpha=1.0 / control["averaged_steps"])
        return loss

    def observe(self, value: float) -> bool:
        """Record a validation value (lower is better); return True when this one starts averaging."""
        control = self.param_groups[0]
        history = control["history"]
        history.append(float(value))
        n = control["nonmono"]
        if not control["averaging"] and len(history) > n and history[-1] > min(history[:-n]):
            control["averaging"], control["averaged_steps"] = True, 0
            return True
        return False

    @torch.no_grad()
    def swap_in_average(self) -> Callable[[], None] | None:
        if not self.averaging or not self.param_groups[0]["averaged_steps"]:
            return None
        saved = []
        for group in self.param_groups:
            for p in group["params"]:
                if "average" in self.state[p]:
                    saved.append((p, p.detach().clone()))
                    p.copy_(self.state[p]["average"])

        @torch.no_grad()
        def restore() -> None:
            for p, value in saved:
                p.copy_(value)

        return restore
