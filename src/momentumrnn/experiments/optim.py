"""The optimizers of a training run, under one protocol (``Optimizer``).

``build_optimizer`` makes the configured one: torch's SGD, Adam or RMSprop (``Plain``),
NT-ASGD (``NTASGD``), or, for the orthogonal models, the two-optimizer recipe
(``OrthogonalRecipe``).

NT-ASGD is SGD that switches to averaged SGD when validation stops improving, after
Merity, Keskar and Socher (2018), *Regularizing and Optimizing LSTM Language Models*, as
the AWD-LSTM scripts (and the MomentumRNN authors' copy of them) run it: train with
``torch.optim.SGD``; after each validation, if the value is worse than the best of the
earlier values except the last ``nonmono`` of them (the current value is compared, not
counted: ``len(earlier) > nonmono and value > min(earlier[:-nonmono])``), switch, once and
for good, to ``torch.optim.ASGD(lr, t0=0, lambd=0, weight_decay)``. That is torch's ASGD
itself, with its own conventions: its running average ``ax`` restarts at the second step
after the switch (it is the mean of the iterates from the second on), and each step uses
the learning rate the group had at the previous step (``eta``), which matters where the
rate changes from step to step (the AWD-LSTM's variable bptt scales it). Validation, the
kept best weights and test use the average.

The switch, the history of validation values and the inner optimizer's state live in
``state_dict`` (a resumed run continues exactly); the state of the former NT-ASGD (SGD
with the average kept in the optimizer, ``averaged_steps``) still loads.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["Optimizer", "Plain", "NTASGD", "OrthogonalRecipe", "build_optimizer"]


class Optimizer:
    """What the trainer asks of an optimizer: torch's ``param_groups``, ``zero_grad()``,
    ``step()``, ``state_dict()`` and ``load_state_dict()``, and two hooks of the optimizers
    that average the weights (NT-ASGD), here with the defaults of those that do not:

    * ``swap_in_average()``: put the averaged weights into the parameters (for validation)
      and return a function that puts the trained ones back; None: there is no average.
    * ``observe(value)``: see the validation value (lower is better) after each validation.
    """

    def swap_in_average(self) -> Callable[[], None] | None:
        return None

    def observe(self, value: float) -> None:
        pass


class Plain(Optimizer):
    """A torch optimizer (SGD, Adam, RMSprop) under the protocol: it keeps no average."""

    def __init__(self, inner: torch.optim.Optimizer):
        self.inner = inner

    @property
    def param_groups(self):
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        return self.inner.step(closure)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def build_optimizer(config: dict, model) -> Optimizer:
    """The configured optimizer over ``model``'s parameters (two for orthogonal models)."""
    if "lr_orth" in config:
        from ..orthogonal import split_orthogonal_parameters

        orthogonal, other = split_orthogonal_parameters(model)
        return OrthogonalRecipe(_optimizer(config, other),
                                torch.optim.RMSprop(orthogonal, lr=config["lr_orth"], alpha=config["alpha"]), model)
    return _optimizer(config, model.parameters())


def _optimizer(config: dict, parameters) -> Optimizer:
    name, lr, decay = config["optimizer"], config["lr"], config["weight_decay"]
    if name == "rmsprop":
        return Plain(torch.optim.RMSprop(parameters, lr=lr, alpha=config["alpha"], weight_decay=decay))
    if name == "adam":
        return Plain(torch.optim.Adam(parameters, lr=lr, weight_decay=decay))
    if name == "ntasgd":
        return NTASGD(parameters, lr=lr, weight_decay=decay, nonmono=config.get("nonmono", 5))
    return Plain(torch.optim.SGD(parameters, lr=lr, weight_decay=decay))


class OrthogonalRecipe(Optimizer):
    """The two-optimizer recipe of the orthogonal models: ``main`` for every parameter but
    the orthogonal ones, RMSprop at ``lr_orth`` for those, and the change of base every K
    steps (``trivialization_step``) after each step. It keeps no average (the hooks of
    ``main`` are not called)."""

    def __init__(self, main: Optimizer, orthogonal: torch.optim.Optimizer, model):
        self.main, self.orthogonal, self.model = main, orthogonal, model
        self.param_groups = main.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.main.zero_grad(set_to_none=set_to_none)
        self.orthogonal.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        from ..orthogonal import trivialization_step

        self.main.step()
        self.orthogonal.step()
        trivialization_step(self.model)

    def state_dict(self) -> dict:
        return {"main": self.main.state_dict(), "orthogonal": self.orthogonal.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"main", "orthogonal"}:
            raise ValueError(f"expected the states of two optimizers (main, orthogonal), got keys {sorted(state)}")
        self.main.load_state_dict(state["main"])
        self.orthogonal.load_state_dict(state["orthogonal"])


class NTASGD(Plain):
    """SGD (``lr``, ``weight_decay``) with the non-monotonically triggered switch to
    ``torch.optim.ASGD``. Call ``observe(value)`` after each validation (lower is better);
    ``swap_in_average()`` puts the averaged weights into the parameters and returns a
    function that puts the trained ones back (None before the switch). ``param_groups``,
    ``state``, ``step`` and ``zero_grad`` are those of the optimizer in use (``inner``, as
    for ``Plain``)."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, nonmono: int = 5):
        if lr <= 0 or weight_decay < 0 or nonmono < 1:
            raise ValueError(f"NTASGD needs lr > 0, weight_decay >= 0 and nonmono >= 1; got {lr}, {weight_decay}, "
                             f"{nonmono}")
        self.params = list(params)
        self.weight_decay = weight_decay
        self.nonmono = int(nonmono)
        self.history: list[float] = []
        self.inner: torch.optim.Optimizer = torch.optim.SGD(self.params, lr=lr, weight_decay=weight_decay)

    @property
    def averaging(self) -> bool:
        return isinstance(self.inner, torch.optim.ASGD)

    def _switch(self) -> None:
        lr = self.inner.param_groups[0]["lr"]
        self.inner = torch.optim.ASGD(self.params, lr=lr, t0=0, lambd=0.0, weight_decay=self.weight_decay)

    def observe(self, value: float) -> bool:
        """Record a validation value (lower is better); return True when this one starts averaging."""
        earlier, n = self.history, self.nonmono
        switch = not self.averaging and len(earlier) > n and value > min(earlier[:-n])
        self.history.append(float(value))
        if switch:
            self._switch()
        return switch

    @torch.no_grad()
    def swap_in_average(self) -> Callable[[], None] | None:
        if not self.averaging:
            return None
        saved = []
        for p in self.params:
            if "ax" in self.inner.state[p]:
                saved.append((p, p.detach().clone()))
                p.copy_(self.inner.state[p]["ax"])
        if not saved:                                    # switched, no averaged step yet
            return None

        @torch.no_grad()
        def restore() -> None:
            for p, value in saved:
                p.copy_(value)

        return restore

    def state_dict(self) -> dict:
        return {"nonmono": self.nonmono, "history": list(self.history), "averaging": self.averaging,
                "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        former = "inner" not in state
        if former:
            state = _from_former(state)
        if state["averaging"] and not self.averaging:
            self._switch()
        elif not state["averaging"] and self.averaging:
            self.inner = torch.optim.SGD(self.params, lr=self.inner.param_groups[0]["lr"],
                                         weight_decay=self.weight_decay)
        inner = state["inner"]
        if former:                     # the group settings of a fresh optimizer, with the saved rates
            fresh = self.inner.state_dict()
            for group, saved in zip(fresh["param_groups"], inner["param_groups"]):
                group.update(lr=saved["lr"], weight_decay=saved["weight_decay"])
            inner = {"state": inner["state"], "param_groups": fresh["param_groups"]}
        self.inner.load_state_dict(inner)
        self.nonmono, self.history = int(state["nonmono"]), [float(v) for v in state["history"]]


def _from_former(state: dict) -> dict:
    """The state of the former NT-ASGD (one torch.optim.Optimizer state: the switch, the
    history and ``averaged_steps`` in its first group, the running mean ``average`` per
    parameter) as this one's. Averaging continues as a mean over the iterates averaged so
    far and those to come."""
    try:
        groups = state["param_groups"]
        control = groups[0]
        averaging, history, nonmono = bool(control["averaging"]), control["history"], control["nonmono"]
        count = int(control["averaged_steps"])
        rates = [{"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in groups]
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"not an NT-ASGD optimizer state: {error}") from None
    per_param: dict = {}
    if averaging:
        for group in groups:
            for index in group["params"]:
                average = state["state"].get(index, {}).get("average")
                if average is not None:      # ASGD weighs its next iterate by mu = 1 / (step - t0)
                    per_param[index] = {"step": torch.tensor(float(count + 1)),
                                        "eta": torch.tensor(float(group["lr"])),
                                        "mu": torch.tensor(1.0 / max(1, count + 1)), "ax": average.clone()}
    return {"nonmono": nonmono, "history": history, "averaging": averaging,
            "inner": {"state": per_param, "param_groups": rates}}
