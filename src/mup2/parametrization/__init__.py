"""Width-aware parametrization of any PyTorch model: roles, schemes, init and param groups.

- :mod:`~mup2.parametrization.shapes`: base shapes, ``m_in``/``m_out``, role inference;
- :mod:`~mup2.parametrization.schemes`: SP and μP (SGD, Adam) as data;
- :mod:`~mup2.parametrization.init`: init rules, measured from the model's own init;
- :mod:`~mup2.parametrization.attention`: μP's ``1/d_head`` attention-logit scale;
- :mod:`~mup2.parametrization.forward_multipliers`: output multipliers (tied readouts);
- :mod:`~mup2.parametrization.parametrize`: :class:`Parametrization`, the one object a user
  builds (``infer``, ``init_``, ``param_groups``, ``report``, serialization).
"""

from mup2.parametrization.init import InitRule
from mup2.parametrization.parametrize import Override, Parametrization, TensorSpec
from mup2.parametrization.schemes import (
    MUP_ADAM,
    MUP_MUON,
    MUP_SGD,
    SCHEMES,
    SP,
    Scheme,
    get_scheme,
)
from mup2.parametrization.shapes import ShapeError, TensorShape, infer_shapes

__all__ = [
    "MUP_ADAM",
    "MUP_MUON",
    "MUP_SGD",
    "SCHEMES",
    "SP",
    "InitRule",
    "Override",
    "Parametrization",
    "Scheme",
    "ShapeError",
    "TensorShape",
    "TensorSpec",
    "get_scheme",
    "infer_shapes",
]
