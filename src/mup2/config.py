"""The schema of one training run (``mup2 train CONFIG``), validated with pydantic.

A config is a mapping (from TOML or YAML) with top-level keys and the sections ``model``,
``data``, ``optimizer``, ``sam`` and ``schedule``; ``model``, ``data`` and ``optimizer`` are
selected by their ``name``. Unknown keys and bad values raise :class:`ConfigError`, whose message
names each offending key as a dotted path (``optimizer.momentum: ...``). See ``docs/training.md``.
"""

from __future__ import annotations

import difflib
import itertools
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from mup2.errors import UserError
from mup2.losses import Loss
from mup2.models.registry import base_width as _default_base_width
from mup2.optim.families import FAMILIES, get_family
from mup2.optim.rho_schedule import parse_rho_schedule
from mup2.optim.rules import get_rule
from mup2.precision import Precision

__all__ = [
    "AdaGradNormConfig",
    "AdagradConfig",
    "AdamWConfig",
    "CIFARData",
    "ConfigError",
    "DataConfig",
    "FashionMNISTData",
    "IDXData",
    "MLPConfig",
    "ModelConfig",
    "MuonConfig",
    "OptimizerConfig",
    "ResMLPConfig",
    "ResNetConfig",
    "SAMConfig",
    "SGDConfig",
    "ScheduleConfig",
    "Section",
    "SyntheticData",
    "TrainConfig",
    "ViTConfig",
    "load_config",
    "parse_config",
    "read_config_file",
]


class ConfigError(UserError, ValueError):
    """A config that does not validate; the message has one ``key: problem`` line per error."""


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: A fraction in ``[0, 1)`` (momenta, label smoothing, label noise).
_Unit = Annotated[float, Field(ge=0.0, lt=1.0)]

# -- models -----------------------------------------------------------------------------------


class _ModelBase(Section):
    width: PositiveInt
    base_width: PositiveInt | None = None  # None: the model's documented BASE_WIDTH

    def kwargs(self, scheme: str) -> dict[str, Any]:
        """Constructor keywords for :func:`mup2.models.build_model` besides the width."""
        return self.model_dump(exclude={"name", "width", "base_width", "base_depth", "alpha"})


class MLPConfig(_ModelBase):
    """:class:`mup2.models.MLP`: ``width`` is the hidden width."""

    name: Literal["mlp"]
    depth: int = Field(default=3, ge=2)
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    norm: Literal["none", "layer", "batch"] = "none"
    bias: bool = True


class ResMLPConfig(_ModelBase):
    """:class:`mup2.models.ResMLP`: ``width`` is the residual stream's, ``depth`` the number of
    pre-LN residual blocks. ``base_depth`` (``None``: the model's own, width-only μP): the base
    model's depth, against which the parametrization is depth-aware (CompleteP's rules, each
    branch x ``(depth/base_depth)**-alpha``; ``alpha`` 1: CompleteP, 0.5: Depth-μP)."""

    name: Literal["resmlp"]
    depth: PositiveInt = 4
    mlp_ratio: PositiveInt = 1
    activation: Literal["relu", "gelu"] = "relu"
    bias: bool = True
    base_depth: PositiveInt | None = None
    alpha: float = Field(default=1.0, gt=0.0, le=1.0)


class ResNetConfig(_ModelBase):
    """:class:`mup2.models.ResNet18`: ``width`` is the first stage's channels (64 k for a
    width multiplier k)."""

    name: Literal["resnet18"]


class ViTConfig(_ModelBase):
    """:class:`mup2.models.ViT`: ``width`` is the embedding dimension (a multiple of ``d_head``).

    ``zero_init`` (query and readout start at zero) defaults to ``True`` under μP schemes and
    ``False`` under SP, so that ``scheme = "sp"`` trains the standard ViT. ``pool``: the head
    reads the cls token or the mean of the patch tokens (the one to use across depth,
    ``docs/math.md`` §9).
    """

    name: Literal["vit"]
    depth: PositiveInt = 6
    d_head: PositiveInt = 32
    patch_size: PositiveInt = 4
    mlp_ratio: PositiveInt = 4
    attn_mult: PositiveFloat | None = None
    zero_init: bool | None = None
    pool: Literal["cls", "mean"] = "cls"
    base_depth: PositiveInt | None = None  # as ResMLPConfig's
    alpha: float = Field(default=1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _heads(self) -> ViTConfig:
        for key in ("width", "base_width"):
            value = getattr(self, key)
            if value is not None and value % self.d_head:
                raise ValueError(f"model.{key}: {value} is not a multiple of d_head={self.d_head}")
        return self

    def kwargs(self, scheme: str) -> dict[str, Any]:
        out = super().kwargs(scheme)
        if out["zero_init"] is None:
            out["zero_init"] = scheme != "sp"
        return out


ModelConfig = Annotated[
    MLPConfig | ResMLPConfig | ResNetConfig | ViTConfig, Field(discriminator="name")
]

# -- data -------------------------------------------------------------------------------------


class _DataBase(Section):
    """Keys every dataset has. ``label_noise``: the fraction of training labels replaced by a
    uniformly drawn *other* class (symmetric noise, :func:`mup2.data.with_label_noise`), chosen
    by ``label_noise_seed`` alone, so every width, parametrization and trial seed sees the same
    corrupted labels; the test split stays clean."""

    train_size: PositiveInt | None = None  # None: all; else the first train_size examples
    test_size: PositiveInt | None = None
    crop_padding: NonNegativeInt = 0  # random crop with this zero padding (0: no crop)
    hflip: bool = False  # random horizontal flips
    label_noise: _Unit = 0.0
    label_noise_seed: NonNegativeInt = 0


class FashionMNISTData(_DataBase):
    """Fashion-MNIST from ``root``, else ``$MUP2_FASHION_MNIST_DIR``, else Debian's location."""

    name: Literal["fashion-mnist"]
    root: str | None = None


class IDXData(_DataBase):
    """Any MNIST-format dataset: the four IDX files in ``root``."""

    name: Literal["idx"]
    root: str
    num_classes: int = Field(default=10, ge=2)


class CIFARData(_DataBase):
    """CIFAR-10/100 python batches in ``root`` (else ``$MUP2_CIFAR_DIR``)."""

    name: Literal["cifar10", "cifar100"]
    root: str | None = None


class SyntheticData(_DataBase):
    """:func:`mup2.data.synthetic_classification`; ``seed`` is the data's own seed."""

    name: Literal["synthetic"]
    train_size: PositiveInt = 2048
    test_size: PositiveInt = 512
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8)
    num_classes: int = Field(default=10, ge=2)
    noise: NonNegativeFloat = 3.0
    seed: NonNegativeInt = 0


DataConfig = Annotated[
    FashionMNISTData | IDXData | CIFARData | SyntheticData, Field(discriminator="name")
]

# -- optimization -----------------------------------------------------------------------------


class _OptBase(Section):
    lr: PositiveFloat
    weight_decay: NonNegativeFloat = 0.0
    # "lr-scaled": decay follows each tensor's μP LR; "independent": lr * weight_decay is the same
    # for every tensor (see mup2.Parametrization.infer)
    wd_policy: Literal["lr-scaled", "independent"] = "lr-scaled"


class SGDConfig(_OptBase):
    """``torch.optim.SGD`` (coupled weight decay, as torch's)."""

    name: Literal["sgd"]
    momentum: _Unit = 0.9
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov(self) -> SGDConfig:
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("optimizer.nesterov: Nesterov momentum needs momentum > 0")
        return self


class AdamWConfig(_OptBase):
    """``torch.optim.AdamW`` (decoupled weight decay)."""

    name: Literal["adamw"]
    betas: tuple[_Unit, _Unit] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8


class AdaGradNormConfig(_OptBase):
    """:class:`mup2.AdaGradNorm` (SGD-like: use ``scheme = "mup-sgd"``); accumulator from
    ``eps0**2``."""

    name: Literal["adagrad-norm"]
    eps0: PositiveFloat = 1e-8


class AdagradConfig(_OptBase):
    """``torch.optim.Adagrad`` with its accumulator from ``eps0**2`` and no ``eps``
    (Adam-like: use ``scheme = "mup-adam"``)."""

    name: Literal["adagrad"]
    eps0: PositiveFloat = 1e-8


class MuonConfig(_OptBase):
    """:class:`mup2.optim.MuonAdamW`: Muon (``momentum``, ``nesterov``) on the hidden matrices,
    AdamW (``betas``, ``eps``) elsewhere, one ``lr`` (use ``scheme = "mup-muon"``)."""

    name: Literal["muon"]
    momentum: _Unit = 0.95
    nesterov: bool = True
    betas: tuple[_Unit, _Unit] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8


OptimizerConfig = Annotated[
    SGDConfig | AdamWConfig | AdaGradNormConfig | AdagradConfig | MuonConfig,
    Field(discriminator="name"),
]


class SAMConfig(Section):
    """The SAM rule and its perturbation scaling; ``rho = 0`` is the plain base optimizer.

    ``rule = "lightsam"``: :class:`mup2.LightSAM` with the optimizer's adaptive step size in the
    ascent too (``adamw``: Adam, ``adagrad``, ``adagrad-norm``); ``bias_correction`` and
    ``ascent_beta1`` are its Adam-ascent options. ``rule = "sam-readout"``: SAM on the readout
    alone (its weight and bias), the control of the mechanism (``docs/sam.md``). The one-pass
    rules cost one forward/backward per step: ``"msam"`` (:class:`mup2.MSAM`, along minus the
    momentum of ``sgd`` with ``momentum > 0`` or ``adamw``; its ``rho`` is larger than SAM's,
    about 0.3) and ``"rwp"`` (:class:`mup2.RWP`, Gaussian noise of std ``rho`` at base width,
    seeded from the run's seed); a ``schedule`` applies to them too, ``every`` does not.

    Cheaper SAM (``docs/sam.md``, "Cheap SAM"): ``schedule = "late:F"`` runs the base optimizer
    alone (``rho = 0``, one pass) for the first ``1 - F`` of the steps and SAM for the last
    ``F`` (:class:`mup2.optim.LatePhase`); ``every = k`` takes SAM's second pass on every
    ``k``-th step only, and ``between`` says what the steps in between do: ``"sgd"``, the base
    step on the plain gradient, or ``"looksam"``, LookSAM's reuse of the orthogonal component
    with ``alpha`` (and ``layerwise``: per tensor)."""

    rho: NonNegativeFloat = 0.0
    rule: Literal[
        "sam", "asam", "asam-layerwise", "sam-on", "sam-readout", "lightsam", "msam", "rwp"
    ] = "sam"
    scaling: Literal["naive", "global", "mup2", "mup2-coupled"] = "mup2"
    eta: NonNegativeFloat = 0.01
    bias_correction: bool = True
    ascent_beta1: _Unit = 0.0
    schedule: str = "constant"
    every: PositiveInt = 1
    between: Literal["sgd", "looksam"] = "sgd"
    alpha: NonNegativeFloat = 0.7
    layerwise: bool = False

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_rho_schedule(value)
        return value

    @property
    def late_fraction(self) -> float | None:
        """``F`` of ``schedule = "late:F"``; ``None`` for ``"constant"``."""
        return parse_rho_schedule(self.schedule)

    def sam_rule(self, optimizer: str) -> str:
        """The name of the rule (:mod:`mup2.optim.rules`) run with base ``optimizer``:
        ``lightsam`` means the LightSAM rule of the optimizer's adaptive step size."""
        if self.rule != "lightsam":
            return self.rule
        variant = get_family(optimizer).lightsam
        if variant is None:
            raise ValueError(
                f"sam.rule: 'lightsam' needs an adaptive optimizer, not {optimizer!r}: set "
                "optimizer.name to "
                + ", ".join(repr(n) for n, f in FAMILIES.items() if f.lightsam is not None)
            )
        return f"lightsam-{variant}"

    @model_validator(mode="after")
    def _pair(self) -> SAMConfig:
        try:
            get_rule(self.sam_rule("adamw")).scaling(self.scaling)
        except ValueError as exc:
            raise ValueError(f"sam.scaling: {exc}") from None
        if self.between == "looksam" and self.every == 1:
            raise ValueError(
                "sam.between: 'looksam' reuses a SAM step's gradient on the steps between SAM "
                "steps, and with every = 1 there are none; set sam.every to k >= 2"
            )
        if self.between != "looksam":
            for key, default in (("alpha", 0.7), ("layerwise", False)):
                if getattr(self, key) != default:
                    raise ValueError(
                        f"sam.{key}: LookSAM's, set only with sam.between = 'looksam' "
                        f"(between is {self.between!r})"
                    )
        rule = get_rule(self.sam_rule("adamw"))
        if rule.one_pass and self.every != 1:
            raise ValueError(
                f"sam.every: {rule.name!r} is one-pass (it perturbs in the step's only pass), "
                "and every = k skips SAM's second pass, which it does not take; set every = 1"
            )
        return self


class ScheduleConfig(Section):
    """Base-LR schedule, stepped every iteration: ``warmup_epochs`` of linear warmup from
    ``warmup_start_factor * lr``, then ``constant``, ``step`` (times ``gamma`` at each epoch in
    ``milestones``) or ``cosine`` (down to ``min_lr_factor * lr`` at the end)."""

    name: Literal["constant", "step", "cosine"] = "constant"
    warmup_epochs: NonNegativeFloat = 0.0
    warmup_start_factor: float = Field(default=0.01, gt=0.0, le=1.0)
    milestones: list[PositiveInt] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    min_lr_factor: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _milestones(self) -> ScheduleConfig:
        if self.milestones and self.name != "step":
            raise ValueError(f"schedule.milestones: only for name = 'step', not {self.name!r}")
        if self.name == "step" and not self.milestones:
            raise ValueError("schedule.milestones: the step schedule needs at least one epoch")
        if any(b <= a for a, b in itertools.pairwise(self.milestones)):
            raise ValueError(f"schedule.milestones: {self.milestones} must increase strictly")
        return self


# -- the run ----------------------------------------------------------------------------------


class TrainConfig(Section):
    """One training run. ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``,
    ``cuda`` or ``cuda:N``. The last training batch of an epoch is dropped when incomplete.

    ``precision``: ``fp32``; ``bf16`` (forward and backward under bf16 autocast, CPU or CUDA);
    ``fp16`` (fp16 autocast with a gradient scaler, meant for CUDA). Weights, gradients,
    optimizer state and the perturbation stay fp32 in every case (:mod:`mup2.precision`).

    ``loss``: ``cross-entropy``, or ``mse`` (half the squared distance of the logits to the
    one-hot label, summed over classes, :func:`mup2.losses.per_example_loss`); both train with
    ``label_smoothing`` (MSE: toward the smoothed one-hot target) and report the test loss with
    the same loss, without smoothing."""

    model: ModelConfig
    data: DataConfig
    optimizer: OptimizerConfig
    scheme: Literal["sp", "mup-sgd", "mup-adam", "mup-muon"] = "mup-sgd"
    sam: SAMConfig = Field(default_factory=SAMConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: Loss = "cross-entropy"
    epochs: PositiveInt
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 1000
    label_smoothing: _Unit = 0.0
    precision: Precision = "fp32"
    seed: NonNegativeInt = 0
    device: str = "auto"
    checkpoint: bool = True  # with a run directory: save a checkpoint after every epoch
    progress: bool = True  # one log line per epoch; a tqdm bar in a terminal

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "auto":
            try:
                torch.device(value)
            except RuntimeError:
                raise ValueError(f"'auto', 'cpu', 'cuda' or 'cuda:N', not {value!r}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        opt = self.optimizer.name
        want = get_family(opt).scheme
        if self.scheme != "sp" and self.scheme != want:
            raise ValueError(
                f"scheme: {self.scheme!r} has the wrong LR multipliers for optimizer "
                f"{opt!r}; use {want!r}"
            )
        rule = get_rule(self.sam.sam_rule(opt))
        if rule.reads_momentum and (
            get_family(opt).name not in ("sgd", "adamw")
            or getattr(self.optimizer, "momentum", 1.0) == 0.0
        ):
            raise ValueError(
                f"sam.rule: {rule.name!r} perturbs along the optimizer's momentum: use "
                "optimizer.name 'sgd' with momentum > 0, or 'adamw'"
            )
        mlp = self.model if isinstance(self.model, MLPConfig) else None
        if rule.norm_only and mlp is not None and mlp.norm == "none":
            raise ValueError(
                f"sam.rule: {rule.name!r} perturbs only normalization layers and the MLP has "
                "none; set model.norm to 'layer' or 'batch'"
            )
        if self.sam.between == "looksam" and self.precision == "fp16":
            raise ValueError(
                "sam.between: LookSAM keeps a gradient across steps and takes no gradient "
                "scaler; use precision = 'bf16' or 'fp32'"
            )
        n = self.data.train_size
        if n is not None and self.batch_size > n:
            raise ValueError(
                f"batch_size: {self.batch_size} is more than data.train_size = {n}; lower "
                "batch_size or raise data.train_size"
            )
        if self.schedule.warmup_epochs >= self.epochs:
            raise ValueError(
                f"schedule.warmup_epochs: {self.schedule.warmup_epochs} must be below "
                f"epochs = {self.epochs}"
            )
        if any(m >= self.epochs for m in self.schedule.milestones):
            raise ValueError(
                f"schedule.milestones: {self.schedule.milestones} must be below "
                f"epochs = {self.epochs}"
            )
        return self

    @property
    def base_width(self) -> int:
        """``model.base_width``, else the model's documented base width."""
        return self.model.base_width or _default_base_width(self.model.name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy (``parse_config(c.to_dict()) == c``)."""
        return self.model_dump(mode="json")


# -- parsing and error messages ---------------------------------------------------------------

_UNIONS: dict[str, dict[str, type[BaseModel]]] = {
    "model": {
        "mlp": MLPConfig,
        "resmlp": ResMLPConfig,
        "resnet18": ResNetConfig,
        "vit": ViTConfig,
    },
    "data": {
        "fashion-mnist": FashionMNISTData,
        "idx": IDXData,
        "cifar10": CIFARData,
        "cifar100": CIFARData,
        "synthetic": SyntheticData,
    },
    "optimizer": {
        "sgd": SGDConfig,
        "adamw": AdamWConfig,
        "adagrad-norm": AdaGradNormConfig,
        "adagrad": AdagradConfig,
        "muon": MuonConfig,
    },
}
_SECTIONS: dict[str, type[BaseModel]] = {"sam": SAMConfig, "schedule": ScheduleConfig}


def _describe(err: Mapping[str, Any]) -> str:
    loc = [str(x) for x in err["loc"]]
    kind, msg = err["type"], str(err["msg"])
    cls: type[BaseModel] = TrainConfig
    if loc and loc[0] in _UNIONS:
        if kind in ("union_tag_not_found", "union_tag_invalid"):
            return f"{loc[0]}.name: must be one of {sorted(_UNIONS[loc[0]])}"
        if len(loc) > 1 and loc[1] in _UNIONS[loc[0]]:
            cls = _UNIONS[loc[0]][loc.pop(1)]
    elif loc and loc[0] in _SECTIONS:
        cls = _SECTIONS[loc[0]]
    key = ".".join(loc)
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        return msg if not key or msg.startswith(key.split(".")[0] + ".") else f"{key}: {msg}"
    if kind == "extra_forbidden":
        allowed = sorted(cls.model_fields)
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{key}: unknown key{hint} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        if loc and loc[-1].isdigit():  # a position in a list or tuple
            return f"{'.'.join(loc[:-1])}: too few items"
        return f"{key}: required key is missing"
    return f"{key}: {msg} (got {err.get('input')!r})"


def parse_config(data: Mapping[str, Any]) -> TrainConfig:
    """Validate a mapping as a :class:`TrainConfig`; :class:`ConfigError` names the bad keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of keys, not {type(data).__name__}")
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def read_config_file(path: str | Path) -> Any:
    """The parsed contents of a ``.toml``, ``.yaml`` or ``.yml`` file (an empty file: ``{}``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {exc.start}); save it as UTF-8"
        ) from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
            return data if data is not None else {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    raise ConfigError(f"{path}: config files must end in .toml, .yaml or .yml")


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a ``.toml``, ``.yaml`` or ``.yml`` file."""
    try:
        return parse_config(read_config_file(path))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
