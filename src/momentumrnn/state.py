"""The rule state that a layer carries across calls (truncated backpropagation)."""

from __future__ import annotations

from typing import Mapping, NamedTuple

from torch import Tensor

__all__ = ["RuleState"]

#: The state fields with a place of their own in ``RuleState``; a rule's other fields go to
#: ``RuleState.extra``.
NAMED_FIELDS = ("velocity", "second_moment")


class RuleState(NamedTuple):
    """Optimizer state of a layer or cell, returned with ``return_rule_state=True``.

    For a layer, each field of the rule's state (``velocity``, Adam's and RMSProp's
    ``second_moment``, and any other field a rule declares in ``state_fields``) is
    ``(num_layers * num_directions, batch, G * hidden_size)`` (G = 4 for LSTM, 3 for GRU, 1
    for RNN), laid out like ``h_n``; for a cell ``(batch, G * hidden_size)``. ``velocity`` and
    ``second_moment`` are None where the rule has no such field (the plain rule has neither).
    Fields of other names are in ``extra`` (a dict, else None) and read as attributes too:
    ``state.trace`` is ``state.extra["trace"]``. ``steps`` (int64, ``(batch,)``) counts the
    time steps each sequence has taken, which the restarted rules need. Unbatched inputs
    drop the batch dimension.
    """

    velocity: Tensor | None
    second_moment: Tensor | None
    steps: Tensor
    extra: dict[str, Tensor] | None = None

    @classmethod
    def of(cls, fields: Mapping[str, Tensor], steps: Tensor) -> "RuleState":
        """The state of a rule whose fields are ``fields`` (by name), with ``steps``."""
        extra = {name: tensor for name, tensor in fields.items() if name not in NAMED_FIELDS}
        return cls(fields.get("velocity"), fields.get("second_moment"), steps, extra or None)

    def fields(self) -> dict[str, Tensor]:
        """Every field this state holds (not None), by name; ``steps`` apart."""
        named = {name: getattr(self, name) for name in NAMED_FIELDS}
        return {name: t for name, t in {**named, **(self.extra or {})}.items() if t is not None}

    def __getattr__(self, name: str) -> Tensor:
        # By index, not self.extra: torch.compile builds the tuple empty before it fills it.
        extra = tuple.__getitem__(self, 3) if tuple.__len__(self) > 3 else None
        if extra and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def detach(self) -> "RuleState":
        """The same state cut from the autograd graph (between truncated-BPTT chunks)."""
        return RuleState.of({name: tensor.detach() for name, tensor in self.fields().items()}, self.steps.detach())
