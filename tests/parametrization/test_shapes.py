"""Role inference: MLP, conv net with BatchNorm, transformer block, tied weights, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mup2 import Role, ShapeError, infer_shapes
from mup2.parametrization.shapes import normalize_name

from nets import ConvNet, TinyTransformer, mlp


def roles(model: nn.Module, base: object) -> dict[str, tuple[Role, float, float]]:
    return {n: (t.role, t.m_in, t.m_out) for n, t in infer_shapes(model, base).items()}  # type: ignore[arg-type]


def test_mlp_roles_and_fan_multipliers() -> None:
    r = roles(mlp(64, norm=True), mlp(16, norm=True))
    assert r == {
        "0.weight": (Role.INPUT, 1.0, 4.0),
        "0.bias": (Role.INPUT, 1.0, 4.0),
        "2.weight": (Role.HIDDEN, 4.0, 4.0),
        "2.bias": (Role.INPUT, 1.0, 4.0),
        "3.weight": (Role.INPUT, 1.0, 4.0),
        "3.bias": (Role.INPUT, 1.0, 4.0),
        "5.weight": (Role.OUTPUT, 4.0, 1.0),
        "5.bias": (Role.SCALAR, 1.0, 1.0),
    }
    shapes = infer_shapes(mlp(64, norm=True), mlp(16, norm=True))
    assert [n for n, t in shapes.items() if t.norm] == ["3.weight", "3.bias"]


def test_base_as_shape_mapping_and_as_multiplier_agree() -> None:
    model, base = mlp(64), mlp(16)
    from_model = infer_shapes(model, base)
    mapping = {n: tuple(p.shape) for n, p in base.named_parameters()}
    assert infer_shapes(model, mapping) == from_model
    structural = infer_shapes(model, 4.0)
    assert {n: (t.role, t.m_in, t.m_out) for n, t in structural.items()} == {
        n: (t.role, t.m_in, t.m_out) for n, t in from_model.items()
    }
    assert all(t.source == "structural" for t in structural.values())


def test_meta_device_base_is_enough() -> None:
    with torch.device("meta"):
        base = mlp(16)
    assert roles(mlp(64), base)["2.weight"] == (Role.HIDDEN, 4.0, 4.0)


def test_convnet_with_batchnorm() -> None:
    r = roles(ConvNet(32), ConvNet(8))
    assert r["stem.weight"] == (Role.INPUT, 1.0, 4.0)
    assert r["conv.weight"] == (Role.HIDDEN, 4.0, 4.0)
    assert r["conv.bias"] == (Role.INPUT, 1.0, 4.0)
    assert r["bn0.weight"] == (Role.INPUT, 1.0, 4.0)
    assert r["head.weight"] == (Role.OUTPUT, 4.0, 1.0)
    shapes = infer_shapes(ConvNet(32), ConvNet(8))
    assert {n for n, t in shapes.items() if t.norm} == {
        "bn0.weight",
        "bn0.bias",
        "bn1.weight",
        "bn1.bias",
    }


def test_transformer_block_packed_attention_and_tied_embedding() -> None:
    shapes = infer_shapes(TinyTransformer(64), TinyTransformer(16))
    r = {n: (t.role, t.m_in, t.m_out) for n, t in shapes.items()}
    assert r["embed.weight"] == (Role.INPUT, 1.0, 4.0)  # (vocab, d): fan_out is dim 1
    assert r["pos"] == (Role.INPUT, 1.0, 4.0)
    assert r["block.self_attn.in_proj_weight"] == (Role.HIDDEN, 4.0, 4.0)  # packed (3d, d)
    assert r["block.self_attn.in_proj_bias"] == (Role.INPUT, 1.0, 4.0)
    assert r["block.self_attn.out_proj.weight"] == (Role.HIDDEN, 4.0, 4.0)
    assert r["block.linear1.weight"] == (Role.HIDDEN, 4.0, 4.0)
    assert r["block.norm1.weight"] == (Role.INPUT, 1.0, 4.0)
    assert shapes["block.norm1.weight"].norm
    assert "head.weight" not in shapes  # tied: one entry, with its alias
    assert shapes["embed.weight"].aliases == ("head.weight",)


def test_wrapper_prefixes_are_normalized() -> None:
    assert normalize_name("module._orig_mod.0.weight") == "0.weight"
    assert normalize_name("layers._fsdp_wrapped_module.0.weight") == "layers.0.weight"
    compiled_like = nn.Module()
    compiled_like._orig_mod = mlp(64)  # what torch.compile's wrapper holds
    assert roles(compiled_like, mlp(16)) == roles(mlp(64), mlp(16))


def test_mismatched_base_names_the_tensor_and_both_shapes() -> None:
    base = {n: tuple(p.shape) for n, p in mlp(16).named_parameters()}
    base["2.weight"] = (16, 16, 1)
    with pytest.raises(ShapeError, match=r"2\.weight: shape \[64, 64\] .* \[16, 16, 1\]"):
        infer_shapes(mlp(64), base)


@pytest.mark.parametrize(
    ("base", "name", "fans"),
    [
        (mlp(16, d_in=24), "0.weight", "fan_in goes 24 -> 12 and fan_out 16 -> 64"),
        (mlp(16, classes=8), "4.weight", "fan_in goes 16 -> 64 and fan_out 8 -> 5"),
    ],
)
def test_a_base_that_differs_in_a_fixed_dimension_is_refused(
    base: nn.Module, name: str, fans: str
) -> None:
    """A base with other input features (or classes) must not turn the input layer (readout)
    hidden: one of its fans shrinks while the other grows."""
    with pytest.raises(ShapeError, match=rf"{name} \(Linear\): .*{fans}; one grows and the other"):
        infer_shapes(mlp(64), base)


def test_a_base_wider_than_the_model_is_fine() -> None:
    shapes = infer_shapes(mlp(16), mlp(64))
    assert shapes["2.weight"].role is Role.HIDDEN and shapes["2.weight"].m_in == 0.25
    assert shapes["0.weight"].role is Role.INPUT and shapes["4.weight"].role is Role.OUTPUT


def test_missing_tensor_in_base_is_named() -> None:
    base = {n: tuple(p.shape) for n, p in mlp(16, norm=True).named_parameters()}
    del base["3.weight"]
    with pytest.raises(ShapeError, match=r"3\.weight \(shape \[64\]\) has no counterpart"):
        infer_shapes(mlp(64, norm=True), base)
    with pytest.raises(ShapeError, match="the base has tensors the model lacks"):
        infer_shapes(mlp(64), mlp(16, norm=True))


def test_uninferable_role_says_how_to_override() -> None:
    class Odd(nn.Module):
        def __init__(self, w: int) -> None:
            super().__init__()
            self.t = nn.Parameter(torch.zeros(w, w, w))

    with pytest.raises(
        ShapeError, match=r"cannot infer the role of t .*overrides=\{'t': 'input'\}"
    ):
        infer_shapes(Odd(8), Odd(4))


def test_conv_kernel_growth_is_an_error() -> None:
    m, b = nn.Module(), nn.Module()
    m.c, b.c = nn.Conv2d(3, 8, 5), nn.Conv2d(3, 8, 3)
    with pytest.raises(ShapeError, match=r"cannot infer the role of c\.weight"):
        infer_shapes(m, b)


def test_bad_base_types() -> None:
    with pytest.raises(ShapeError, match="positive"):
        infer_shapes(mlp(8), -2.0)
    with pytest.raises(TypeError, match="base must be"):
        infer_shapes(mlp(8), "wide")  # type: ignore[arg-type]
