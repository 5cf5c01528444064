"""mup2: sharpness-aware training whose hyperparameters transfer across width (μP²).

Two packages hold the paper's two ideas: :mod:`mup2.parametrization` (roles, schemes, init,
param groups) and :mod:`mup2.optim` (the SAM rules and their perturbation scalings, SAM,
LightSAM, the one-pass MSAM and RWP, AdaGrad-Norm, the pass contexts). Their public names are
re-exported here.
"""

from mup2.optim import (
    LIGHTSAM_RULES,
    MSAM,
    ONEPASS_RULES,
    RULES,
    RWP,
    SAM,
    SCALINGS,
    AdaGradNorm,
    LightSAM,
    Rule,
    attach_lr_multipliers,
    frozen_bn_stats,
    get_rule,
    gradient_sync,
    multiplied_lrs,
    no_sync,
)
from mup2.parametrization import (
    MUP_ADAM,
    MUP_SGD,
    SCHEMES,
    SP,
    InitRule,
    Override,
    Parametrization,
    Scheme,
    ShapeError,
    TensorShape,
    TensorSpec,
    get_scheme,
    infer_shapes,
)
from mup2.roles import Power, Role

__all__ = [
    "LIGHTSAM_RULES",
    "MSAM",
    "MUP_ADAM",
    "MUP_SGD",
    "ONEPASS_RULES",
    "RULES",
    "RWP",
    "SAM",
    "SCALINGS",
    "SCHEMES",
    "SP",
    "AdaGradNorm",
    "InitRule",
    "LightSAM",
    "Override",
    "Parametrization",
    "Power",
    "Role",
    "Rule",
    "Scheme",
    "ShapeError",
    "TensorShape",
    "TensorSpec",
    "attach_lr_multipliers",
    "frozen_bn_stats",
    "get_rule",
    "get_scheme",
    "gradient_sync",
    "infer_shapes",
    "multiplied_lrs",
    "no_sync",
]

__version__ = "0.1.0"
