"""The SAM family: rules as data, the one perturbation formula, and the optimizers.

- :mod:`~mup2.optim.rules`: one :class:`Rule` per SAM rule with its perturbation scalings;
- :mod:`~mup2.optim.families`: the base optimizers (SGD-like or Adam-like, their μP scheme);
- :mod:`~mup2.optim.perturb`: the formula on multi-tensor kernels;
- :mod:`~mup2.optim.sam`, :mod:`~mup2.optim.lightsam`, :mod:`~mup2.optim.adagrad_norm`,
  :mod:`~mup2.optim.muon` (Muon on hidden matrices, AdamW elsewhere),
  :mod:`~mup2.optim.onepass` (MSAM and RWP: one forward/backward per step);
- :mod:`~mup2.optim.rho_schedule` (ρ schedules, e.g. late-phase SAM), :mod:`~mup2.optim.looksam`
  (LookSAM's gradient reuse between SAM steps);
- :mod:`~mup2.optim.contexts` (DDP/FSDP gradient sync, frozen BatchNorm statistics),
  :mod:`~mup2.optim.lr_multipliers` (μP LR multipliers applied at step time),
  :mod:`~mup2.optim.shards` (FSDP2 shards), :mod:`~mup2.optim.dcp` (distributed checkpoints).

The optimizers read param groups only (the width metadata of
:meth:`mup2.Parametrization.param_groups`), so nothing here imports :mod:`mup2.parametrization`.
"""

from mup2.optim.adagrad_norm import AdaGradNorm
from mup2.optim.contexts import frozen_bn_stats, gradient_sync, no_sync
from mup2.optim.families import FAMILIES, Family, get_family
from mup2.optim.lightsam import LightSAM
from mup2.optim.lr_multipliers import attach_lr_multipliers, multiplied_lrs
from mup2.optim.muon import MuonAdamW
from mup2.optim.onepass import MSAM, RWP, OnePassSAM
from mup2.optim.rho_schedule import LambdaRho, LatePhase, RhoScheduler
from mup2.optim.rules import (
    LIGHTSAM_RULES,
    ONEPASS_RULES,
    RULES,
    SCALINGS,
    Factor,
    PerturbScaling,
    Rule,
    get_rule,
)
from mup2.optim.sam import SAM, Plan

__all__ = [
    "FAMILIES",
    "LIGHTSAM_RULES",
    "MSAM",
    "ONEPASS_RULES",
    "RULES",
    "RWP",
    "SAM",
    "SCALINGS",
    "AdaGradNorm",
    "Factor",
    "Family",
    "LambdaRho",
    "LatePhase",
    "LightSAM",
    "MuonAdamW",
    "OnePassSAM",
    "PerturbScaling",
    "Plan",
    "RhoScheduler",
    "Rule",
    "attach_lr_multipliers",
    "frozen_bn_stats",
    "get_family",
    "get_rule",
    "gradient_sync",
    "multiplied_lrs",
    "no_sync",
]
