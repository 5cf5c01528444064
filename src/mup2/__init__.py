"""mup2: sharpness-aware training whose hyperparameters transfer across width (μP²)."""

from mup2.adagrad_norm import AdaGradNorm
from mup2.initializers import InitRule
from mup2.lightsam import LightSAM
from mup2.lr import attach_lr_multipliers, multiplied_lrs
from mup2.parametrize import Override, Parametrization, TensorSpec
from mup2.passes import frozen_bn_stats, gradient_sync, no_sync
from mup2.sam import SAM
from mup2.schemes import (
    LIGHTSAM_RULES,
    MUP_ADAM,
    MUP_SGD,
    RULES,
    SCALINGS,
    SCHEMES,
    SP,
    Scheme,
    get_scheme,
)
from mup2.shapes import Role, ShapeError, TensorShape, infer_shapes

__all__ = [
    "LIGHTSAM_RULES",
    "MUP_ADAM",
    "MUP_SGD",
    "RULES",
    "SAM",
    "SCALINGS",
    "SCHEMES",
    "SP",
    "AdaGradNorm",
    "InitRule",
    "LightSAM",
    "Override",
    "Parametrization",
    "Role",
    "Scheme",
    "ShapeError",
    "TensorShape",
    "TensorSpec",
    "attach_lr_multipliers",
    "frozen_bn_stats",
    "get_scheme",
    "gradient_sync",
    "infer_shapes",
    "multiplied_lrs",
    "no_sync",
]

__version__ = "0.1.0"
