"""momentumrnn: MomentumRNN-family recurrent layers for PyTorch.

A cell is a base recurrence (RNN, LSTM, GRU) combined with an optimizer rule
(momentum, Adam, RMSProp, Nesterov with restart, input-only restart); see
``momentumrnn.rules`` and ``momentumrnn.recurrences``. Orthogonal RNNs (DTRIV) with the
same rules are in ``momentumrnn.orthogonal``.
"""

from .cells import (AdamGRUCell, AdamLSTMCell, AdamRNNCell, MomentumGRUCell, MomentumLSTMCell, MomentumRNNCell,
                    NesterovLSTMCell, NesterovRNNCell, RecurrentCell, RestartGRUCell, RestartLSTMCell,
                    RestartRNNCell, RMSPropGRUCell, RMSPropLSTMCell, RMSPropRNNCell)
from .checks import InputDtypeError, InputError
from .layers import (AdamGRU, AdamLSTM, AdamRNN, MomentumGRU, MomentumLSTM, MomentumRNN, NesterovLSTM, NesterovRNN,
                     RecurrentLayer, RestartGRU, RestartLSTM, RestartRNN, RMSPropGRU, RMSPropLSTM, RMSPropRNN)
from .gradients import GradientNorms, gradient_norms
from .recurrences import GRURecurrence, LSTMRecurrence, Recurrence, RNNRecurrence
from .orthogonal import (ORTHOGONAL_LAYERS, AdamOrthogonalRNN, MomentumOrthogonalRNN, OrthogonalRNN,
                         ParameterGroups, RestartOrthogonalRNN, RMSPropOrthogonalRNN, is_former_orthogonal_state,
                         register_trivialization, split_orthogonal_parameters, trivialization_step)
from .rules import AdamRule, MomentumRule, NesterovRule, PlainRule, RestartRule, RMSPropRule, Rule
from .state import RuleState

__version__ = "0.1.0"

_LAYER_CLASSES = (MomentumRNN, AdamRNN, RMSPropRNN, NesterovRNN, RestartRNN,
                  MomentumLSTM, AdamLSTM, RMSPropLSTM, NesterovLSTM, RestartLSTM,
                  MomentumGRU, AdamGRU, RMSPropGRU, RestartGRU)
_CELL_CLASSES = (MomentumRNNCell, AdamRNNCell, RMSPropRNNCell, NesterovRNNCell, RestartRNNCell,
                 MomentumLSTMCell, AdamLSTMCell, RMSPropLSTMCell, NesterovLSTMCell, RestartLSTMCell,
                 MomentumGRUCell, AdamGRUCell, RMSPropGRUCell, RestartGRUCell)

#: Every layer class by ``(recurrence, rule)`` name, e.g. ``LAYERS["lstm", "adam"] is AdamLSTM``.
LAYERS = {(c.recurrence_type.name, c.rule_type.name): c for c in _LAYER_CLASSES}
#: Every cell class by ``(recurrence, rule)`` name.
CELLS = {(c.recurrence_type.name, c.rule_type.name): c for c in _CELL_CLASSES}

__all__ = [c.__name__ for c in _LAYER_CLASSES + _CELL_CLASSES] + [
    "LAYERS", "CELLS", "gradient_norms", "GradientNorms", "RecurrentLayer", "RecurrentCell", "RuleState",
    "Rule", "Recurrence", "RNNRecurrence", "LSTMRecurrence", "GRURecurrence", "MomentumRule", "AdamRule", "RMSPropRule", "NesterovRule", "RestartRule", "PlainRule",
    "OrthogonalRNN", "MomentumOrthogonalRNN", "AdamOrthogonalRNN", "RMSPropOrthogonalRNN", "RestartOrthogonalRNN",
    "ORTHOGONAL_LAYERS", "ParameterGroups", "split_orthogonal_parameters", "trivialization_step",
    "register_trivialization", "is_former_orthogonal_state", "InputError", "InputDtypeError",
]
