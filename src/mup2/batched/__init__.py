"""Batched training: ``K`` configurations of one architecture and width as one stacked model.

:func:`train_batched` has the semantics of ``K`` separate :func:`mup2.train` runs (equal to
float64 rounding, tested) at a fraction of their kernel launches; sweeps use it through
``batch`` (:mod:`mup2.sweep`). :func:`bundle_key` tells which configs may share a bundle and
:func:`auto_bundle_size` how many fit on the device.
"""

from mup2.batched.bundle import BatchError, auto_bundle_size, bundle_key, check_batchable
from mup2.batched.run import BatchedRun, schedule_factors, train_batched
from mup2.batched.sgd import sgd_step_
from mup2.batched.stack import StackedModel, build_stack

__all__ = [
    "BatchError",
    "BatchedRun",
    "StackedModel",
    "auto_bundle_size",
    "build_stack",
    "bundle_key",
    "check_batchable",
    "schedule_factors",
    "sgd_step_",
    "train_batched",
]
