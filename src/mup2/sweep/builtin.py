"""mup2's own training as a sweep objective: each grid point's :class:`~mup2.config.TrainConfig`
trained with :func:`mup2.train` (or bundles of them with :func:`mup2.batched.train_batched`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

import optuna

from mup2.batched import auto_bundle_size, bundle_key, check_batchable, train_batched
from mup2.config import ConfigError, TrainConfig
from mup2.data import DataSplits
from mup2.sweep.config import SweepConfig
from mup2.sweep.grid import GridPoint, expand, trial_config
from mup2.sweep.objective import Record
from mup2.sweep.signals import stop_if_asked
from mup2.train import RunResult, load_data, resolve_device, train

__all__ = ["TrainObjective", "check_batches", "record_of"]


class TrainObjective:
    """Trains a sweep's grid points with mup2's loop; loads each dataset once per worker."""

    def __init__(self, cfg: SweepConfig) -> None:
        if not isinstance(cfg.train, TrainConfig):
            raise TypeError(f"sweep {cfg.name!r} runs a user objective, not mup2's training")
        self.cfg = cfg
        self._data: dict[str, DataSplits] = {}
        self._keys: dict[GridPoint, str] = {}

    def check(self, batch: int | Literal["auto"]) -> None:
        """The device and the dataset (loaded now, once), and with ``batch`` != 1 that the
        points can be trained in bundles (:func:`check_batches`)."""
        assert isinstance(self.cfg.train, TrainConfig)
        resolve_device(self.cfg.train.device)
        self.data(trial_config(self.cfg, expand(self.cfg)[0]))
        if batch != 1:
            check_batches(self.cfg, batch)

    def data(self, config: TrainConfig) -> DataSplits:
        """The dataset of ``config`` (loaded on first use)."""
        key = json.dumps(config.data.model_dump(mode="json"), sort_keys=True)
        if key not in self._data:
            self._data[key] = load_data(config.data)
        return self._data[key]

    def bundle_key(self, point: GridPoint) -> str:
        """The :func:`~mup2.batched.bundle_key` of the point's training config (cached)."""
        if point not in self._keys:
            self._keys[point] = bundle_key(trial_config(self.cfg, point))
        return self._keys[point]

    def bundle_size(self, point: GridPoint, batch: int | Literal["auto"]) -> int:
        """``batch``, or for ``"auto"`` how many points like ``point`` fit on the device now."""
        if batch == "auto":
            return auto_bundle_size(trial_config(self.cfg, point))
        return batch

    def run(
        self, trials: Sequence[optuna.Trial], points: Sequence[GridPoint], *, batched: bool
    ) -> list[Record]:
        """Train the points (one with :func:`~mup2.train`, or any number together with
        :func:`~mup2.batched.train_batched` when ``batched``)."""
        configs = [trial_config(self.cfg, point) for point in points]
        data = self.data(configs[0])  # a bundle shares its data set (its bundle key)
        if batched:
            results = train_batched(configs, data=data, on_epoch=stop_if_asked)
        else:
            (config,) = configs
            results = [train(config, data=data, on_epoch=stop_if_asked)]
        return [record_of(result) for result in results]


def record_of(result: RunResult) -> Record:
    """A run's record: value = final test accuracy (the last finite epoch's, 0 if none); user
    attributes ``status``, ``test_accuracy``, ``test_loss``, ``seconds`` and ``metrics`` (one
    dict per epoch)."""
    attrs = {k: v for k, v in result.to_dict().items() if k != "diverged_at"}
    value = result.test_accuracy if result.test_accuracy is not None else 0.0
    return Record(value, attrs)


def check_batches(cfg: SweepConfig, batch: int | Literal["auto"]) -> None:
    """Raise :class:`~mup2.batched.BatchError` (a :class:`ConfigError`) naming the reason when
    the sweep's points cannot be trained in bundles of ``batch``. One point per parametrization
    is checked: what decides it (model, optimizer, rule, precision, augmentation) is the same at
    every width."""
    if cfg.user is not None:
        raise ConfigError(
            f"sweep {cfg.name!r} runs a user objective ({cfg.user.objective}), which trains one "
            f"grid point at a time: batch = {batch!r} is for mup2's own training; use batch = 1"
        )
    first = {p.parametrization: p for p in reversed(expand(cfg))}
    for point in first.values():
        try:
            check_batchable([trial_config(cfg, point)])
        except ConfigError as exc:
            raise type(exc)(
                f"sweep {cfg.name!r} cannot train its runs in bundles (batch = {batch!r}): {exc}"
            ) from None
