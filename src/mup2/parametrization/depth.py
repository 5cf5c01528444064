"""Depth bookkeeping: the model's stacks of residual blocks, matched with a shallower (or deeper)
base, and the residual-branch multipliers ``(L/L0)**-alpha`` (``docs/math.md``, depth).

A *stack* is an ``nn.ModuleList`` or ``nn.Sequential`` of blocks of one class holding the same
parameter names and shapes (``layers.N``, ``h.N``, ``blocks.N``); the outermost ones are taken.
Block ``i`` of the model is matched with block ``i mod L0`` of the base's stack of the same
name, so a base of another depth gives every tensor its base shape. A block's *branch outputs*
are the modules whose outputs are added to the residual stream: the model's
``mup2_branches`` attribute (block-relative module names) or, else, those of
:data:`BRANCH_OUTPUTS` the block has. The multiplier is installed on each of them as a forward
multiplier (:mod:`mup2.parametrization.forward_multipliers`), so it is idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from mup2.errors import check_number, shown
from mup2.parametrization.shapes import ShapeError, normalize_name, unwrap

__all__ = [
    "BRANCH_OUTPUTS",
    "DepthSpec",
    "Stack",
    "depth_mismatch",
    "find_stacks",
    "infer_depth",
]

#: Block-relative names of the modules whose outputs a block adds to its residual stream:
#: mup2's ViT (``attn.o``, ``fc2``) and ResMLP (``fc2``), Hugging Face GPT-2 (``attn.c_proj``,
#: ``mlp.c_proj``), Llama/Mistral/Qwen2 (``self_attn.o_proj``, ``mlp.down_proj``), and
#: ``nn.TransformerEncoderLayer`` (``self_attn.out_proj``, ``linear2``).
BRANCH_OUTPUTS: tuple[str, ...] = (
    "attn.o",
    "fc2",
    "attn.c_proj",
    "mlp.c_proj",
    "self_attn.o_proj",
    "mlp.down_proj",
    "self_attn.out_proj",
    "linear2",
)

_FOUND = (
    "mup2 matches blocks by their repeated structure: an nn.ModuleList or nn.Sequential of "
    "blocks of one class with the same parameters (layers.N, h.N, blocks.N)"
)


@dataclass(frozen=True)
class Stack:
    """One stack of residual blocks: its module name, its depth ``L`` in the model and ``L0``
    in the base, and the block-relative names of each block's branch outputs."""

    prefix: str
    depth: int
    base_depth: int
    branches: tuple[str, ...]

    @property
    def ratio(self) -> float:
        """``L / L0``."""
        return self.depth / self.base_depth

    def block(self, name: str) -> int | None:
        """The block index of the tensor or module ``name``, if it lies in this stack."""
        head = f"{self.prefix}." if self.prefix else ""
        if not name.startswith(head):
            return None
        m = re.match(r"(\d+)(\.|$)", name[len(head) :])
        return int(m.group(1)) if m else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "depth": self.depth,
            "base_depth": self.base_depth,
            "branches": list(self.branches),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stack:
        return cls(
            str(d["prefix"]),
            int(d["depth"]),
            int(d["base_depth"]),
            tuple(str(b) for b in d["branches"]),
        )


@dataclass(frozen=True)
class DepthSpec:
    """The model's stacks against the base and the branch exponent ``alpha`` (CompleteP: 1,
    Depth-μP: 1/2): each branch output is multiplied by ``(L/L0)**-alpha``."""

    stacks: tuple[Stack, ...]
    alpha: float

    def stack_of(self, name: str) -> Stack | None:
        """The stack holding tensor ``name`` (``None``: outside every block)."""
        return next((s for s in self.stacks if s.block(name) is not None), None)

    def ratio(self, name: str) -> float:
        """``L/L0`` of the stack holding ``name``; 1 outside the blocks."""
        s = self.stack_of(name)
        return 1.0 if s is None else s.ratio

    def branch_multipliers(self) -> dict[str, float]:
        """``{module name: (L/L0)**-alpha}`` for every branch output of every block."""
        return {
            f"{s.prefix}.{i}.{b}" if s.prefix else f"{i}.{b}": s.ratio**-self.alpha
            for s in self.stacks
            for i in range(s.depth)
            for b in s.branches
        }

    def base_name(self, name: str) -> str:
        """The name of the base's tensor that ``name`` is matched with (block ``i mod L0``)."""
        s = self.stack_of(name)
        if s is None:
            return name
        head = f"{s.prefix}." if s.prefix else ""
        i = s.block(name)
        assert i is not None
        rest = name[len(head) + len(str(i)) :]
        return f"{head}{i % s.base_depth}{rest}"

    def describe(self) -> str:
        """One line per stack for the role report."""
        lines = []
        for s in self.stacks:
            if not s.branches:
                lines.append(
                    f"depth: {s.prefix or '(root)'}: {s.depth} blocks against {s.base_depth} in "
                    "the base, width only (alpha=None, or a scheme without depth rules): "
                    "nothing changes with depth"
                )
                continue
            mult = s.ratio**-self.alpha
            where = ", ".join(f"{s.prefix}.N.{b}" if s.prefix else f"N.{b}" for b in s.branches)
            lines.append(
                f"depth: {s.prefix or '(root)'}: {s.depth} blocks against {s.base_depth} in the "
                f"base (L/L0 = {s.ratio:g}), alpha = {self.alpha:g}: branch multiplier "
                f"x{mult:.3g} on {where}; in-block LR, eps, weight decay and perturbation get "
                "the depth factors (column L/L0)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "stacks": [s.to_dict() for s in self.stacks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DepthSpec:
        return cls(tuple(Stack.from_dict(s) for s in d["stacks"]), float(d["alpha"]))


def _signature(block: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((n, tuple(p.shape)) for n, p in block.named_parameters())


def find_stacks(model: nn.Module) -> dict[str, list[nn.Module]]:
    """``{name: blocks}`` of the outermost stacks of ``model`` (see the module docstring)."""
    found: dict[str, list[nn.Module]] = {}
    for name, module in unwrap(model).named_modules():
        if not isinstance(module, nn.ModuleList | nn.Sequential) or len(module) == 0:
            continue
        name = normalize_name(name)
        if any(name.startswith(f"{f}.") for f in found):
            continue  # inside a block of an outer stack
        blocks = list(module.children())
        first = blocks[0]
        if (
            len(list(first.children())) == 0  # a layer, not a block
            or not any(True for _ in first.parameters())
            or any(type(b) is not type(first) for b in blocks)
            or any(_signature(b) != _signature(first) for b in blocks[1:])
        ):
            continue
        found[name] = blocks
    return found


def _base_depths(base: nn.Module | Mapping[str, Sequence[int]], prefix: str) -> int:
    """The number of blocks of stack ``prefix`` in the base (from its parameter names)."""
    names = (
        [normalize_name(n) for n, _ in base.named_parameters()]
        if isinstance(base, nn.Module)
        else [normalize_name(n) for n in base]
    )
    head = re.escape(f"{prefix}.") if prefix else ""
    idx = {int(m.group(1)) for n in names if (m := re.match(rf"{head}(\d+)\.", n))}
    return len(idx)


def _branches(model: nn.Module, blocks: Sequence[nn.Module], prefix: str) -> tuple[str, ...]:
    shipped = getattr(unwrap(model), "mup2_branches", None)
    names = {n for n, _ in blocks[0].named_modules() if n}
    wanted = tuple(shipped) if shipped is not None else BRANCH_OUTPUTS
    found = tuple(b for b in wanted if b in names)
    if shipped is not None and len(found) != len(tuple(shipped)):
        missing = [b for b in shipped if b not in names]
        raise ShapeError(f"mup2_branches names modules the blocks of {prefix} lack: {missing}")
    if not found:
        raise ShapeError(
            f"the blocks of {prefix} ({type(blocks[0]).__name__}) have none of the residual "
            f"branch outputs mup2 knows ({', '.join(BRANCH_OUTPUTS)}); name them with "
            "branches=('attn.proj', 'mlp.fc2') (block-relative module names), or give the "
            "model a mup2_branches attribute"
        )
    return found


def infer_depth(
    model: nn.Module,
    base: object,
    *,
    depth: int | None = None,
    base_depth: int | None = None,
    alpha: float | None = 1.0,
    branches: Sequence[str] | None = None,
) -> DepthSpec | None:
    """The model's stacks against ``base`` (a model or a mapping name -> shape; a width
    multiplier tells no depth), or ``None`` when no stack differs in depth and neither
    ``depth`` nor ``base_depth`` is given, or when ``alpha`` is ``None`` (width only).

    ``base_depth``: the base's number of blocks when the base given is not that deep (e.g. the
    base at the model's depth, or a width multiplier); ``depth``: the model's, where its
    blocks are not in one stack the inference finds. Raises :class:`ShapeError` when the depth
    differs and no stack is found, or a stack's blocks have no known branch output.
    """
    for name, value in (("depth", depth), ("base_depth", base_depth)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be a positive integer or None, got {shown(value)}")
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if alpha is not None:
        check_number("alpha", alpha)
    if branches is not None and (isinstance(branches, str) or not isinstance(branches, Sequence)):
        raise TypeError(
            f"branches must be a sequence of block-relative module names, got {shown(branches)}"
        )
    stacks = find_stacks(model)
    explicit = depth is not None or base_depth is not None
    out = []
    for prefix, blocks in stacks.items():
        L = len(blocks)
        if depth is not None and len(stacks) == 1 and depth != L:
            raise ShapeError(f"depth={depth} but the model's stack {prefix} has {L} blocks")
        if base_depth is not None:
            L0 = base_depth
        elif isinstance(base, nn.Module | Mapping):
            L0 = _base_depths(base, prefix)
        else:
            L0 = L
        if L0 == 0:
            raise ShapeError(
                f"the base has no blocks {prefix}.N: {_FOUND}; is the base the same architecture?"
            )
        if L0 != L or explicit:
            out.append((prefix, blocks, L, L0))
    if not out:
        if explicit and not stacks:
            raise ShapeError(
                f"depth/base_depth given but the model has no stack of residual blocks: {_FOUND}"
            )
        return None
    if alpha is None:
        return DepthSpec(tuple(Stack(p, L, L0, ()) for p, _, L, L0 in out), 0.0)
    result = []
    for prefix, blocks, L, L0 in out:
        if branches is not None:
            names = {n for n, _ in blocks[0].named_modules() if n}
            missing = [b for b in branches if b not in names]
            if missing:
                raise ShapeError(f"branches {missing} are not modules of the blocks of {prefix}")
            found = tuple(branches)
        else:
            found = _branches(model, blocks, prefix)
        result.append(Stack(prefix, L, L0, found))
    return DepthSpec(tuple(result), float(alpha))


def depth_mismatch(model_names: Sequence[str], base_names: Sequence[str]) -> str | None:
    """A message when the model and the base differ in the number of indexed blocks that no
    stack explained (``None`` when they do not)."""

    def key(n: str) -> str:
        return re.sub(r"\.\d+\.", ".#.", n)

    base_keys = {key(n) for n in base_names}
    extra = [n for n in model_names if n not in set(base_names) and key(n) in base_keys]
    lacking = [
        n
        for n in base_names
        if n not in set(model_names) and key(n) in {key(m) for m in model_names}
    ]
    if not (extra or lacking):
        return None
    which = extra[:3] or lacking[:3]
    return (
        f"the model and the base differ in depth ({'model' if extra else 'base'} tensors "
        f"{which} have no counterpart) and their blocks cannot be matched: {_FOUND}, and "
        "none was found holding them; put the blocks in such a container, or build the base "
        "at the model's depth (width only)"
    )
