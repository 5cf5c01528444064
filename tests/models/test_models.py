import math

import pytest
import torch
from torch import nn

import mup2
from mup2.models import MLP, MODELS, ResMLP, ResNet18, ViT, base_width, build_model
from mup2.models.vit import ZERO_INIT_PATTERNS

VIT = {"depth": 2, "d_head": 8, "patch_size": 4, "image_size": 8}


def _meta(cls: type[nn.Module], width: int, **kw: object) -> nn.Module:
    with torch.device("meta"):
        return cls(width, **kw)


def _roles(model: nn.Module, base: nn.Module, scheme: str = "mup-sgd") -> dict[str, tuple]:
    p = mup2.Parametrization.infer(model, base, scheme)
    p.report()  # must not raise
    return {
        n: (t.shape.role.value, t.shape.m_in, t.shape.m_out, t.shape.norm)
        for n, t in p.tensors.items()
    }


@pytest.mark.parametrize("width", [8, 16])
def test_resnet_roles_at_two_widths(width: int) -> None:
    m = width / 4
    roles = _roles(ResNet18(width, in_channels=1), _meta(ResNet18, 4, in_channels=1))
    assert roles["stem.weight"] == ("input", 1.0, m, False)
    assert roles["stem_bn.weight"] == ("input", 1.0, m, True)
    assert roles["stem_bn.bias"] == ("input", 1.0, m, True)
    for name in ("layer1.0.conv1.weight", "layer3.0.conv2.weight", "layer4.0.shortcut.0.weight"):
        assert roles[name] == ("hidden", m, m, False)
    assert roles["layer4.1.bn2.weight"] == ("input", 1.0, m, True)
    assert roles["layer2.0.shortcut.1.bias"] == ("input", 1.0, m, True)
    assert roles["fc.weight"] == ("output", m, 1.0, False)
    assert roles["fc.bias"] == ("scalar", 1.0, 1.0, False)
    # every tensor is one of those: 1 stem + 8 blocks x 2 convs + 3 shortcuts = 20 convs
    kinds = [r[0] for r in roles.values()]
    assert kinds.count("hidden") == 19 and kinds.count("output") == 1
    assert kinds.count("input") == 1 + 2 * 20  # the stem conv, then a gain and bias per BN


@pytest.mark.parametrize("width", [32, 64])
def test_vit_roles_at_two_widths(width: int) -> None:
    m = width / 16
    roles = _roles(ViT(width, **VIT), _meta(ViT, 16, **VIT), "mup-adam")
    for name in ("cls_token", "pos_embed", "patch_embed.weight", "patch_embed.bias"):
        assert roles[name] == ("input", 1.0, m, False), name
    for name in ("q", "k", "v", "o"):
        assert roles[f"blocks.1.attn.{name}.weight"] == ("hidden", m, m, False)
        assert roles[f"blocks.1.attn.{name}.bias"] == ("input", 1.0, m, False)
    assert roles["blocks.0.fc1.weight"] == ("hidden", m, m, False)
    assert roles["blocks.0.fc2.weight"] == ("hidden", m, m, False)
    for name in ("blocks.0.ln1.weight", "blocks.1.ln2.bias", "norm.weight", "norm.bias"):
        assert roles[name] == ("input", 1.0, m, True), name
    assert roles["head.weight"] == ("output", m, 1.0, False)
    assert roles["head.bias"] == ("scalar", 1.0, 1.0, False)


@pytest.mark.parametrize("width", [32, 64])
def test_mlp_roles_at_two_widths(width: int) -> None:
    m = width / 16
    roles = _roles(MLP(width, norm="batch"), _meta(MLP, 16, norm="batch"))
    assert roles["features.0.weight"] == ("input", 1.0, m, False)
    assert roles["features.1.weight"] == ("input", 1.0, m, True)
    assert roles["features.3.weight"] == ("hidden", m, m, False)
    assert roles["head.weight"] == ("output", m, 1.0, False)


def test_vit_ships_zero_init_and_token_overrides() -> None:
    p = mup2.Parametrization.infer(ViT(32, **VIT), _meta(ViT, 16, **VIT), "mup-adam")
    t = p.tensors
    for name in ("blocks.0.attn.q.weight", "blocks.1.attn.q.bias", "head.weight", "head.bias"):
        assert t[name].init == mup2.InitRule("constant", 0.0), name
    assert t["blocks.0.attn.k.weight"].init.kind == "uniform"
    assert t["cls_token"].init == t["pos_embed"].init == mup2.InitRule("normal", 0.02)
    # μP multipliers still apply to the zero-initialized tensors' learning rates
    assert t["blocks.0.attn.q.weight"].lr_mult == 0.5 and t["head.weight"].lr_mult == 0.5
    assert ViT(32, zero_init=False, **VIT).mup2_overrides.keys() == {"cls_token", "pos_embed"}


def test_vit_mean_pool_has_no_cls_token() -> None:
    """``pool="mean"``: no cls token, one position per patch, the head reads the patch tokens'
    mean (so permuting the patches' embeddings together with their positions changes nothing)."""
    model = ViT(32, pool="mean", **VIT)
    names = dict(model.named_parameters())
    assert "cls_token" not in names and names["pos_embed"].shape == (1, 4, 32)
    assert model.mup2_overrides.keys() == {"pos_embed", *ZERO_INIT_PATTERNS}
    p = mup2.Parametrization.infer(model, _meta(ViT, 16, pool="mean", **VIT), "mup-adam")
    assert p.tensors["pos_embed"].init == mup2.InitRule("normal", 0.02)
    p.init_(model, seed=0)
    torch.nn.init.normal_(model.head.weight)  # the zero readout would hide the pooling
    x = torch.randn(3, 3, 8, 8)
    out = model(x)
    assert out.shape == (3, 10)
    with torch.no_grad():
        model.pos_embed.copy_(model.pos_embed.flip(1))
    swapped = x.view(3, 3, 2, 4, 2, 4).flip(2, 4).reshape(3, 3, 8, 8)  # patches in reverse order
    torch.testing.assert_close(model(swapped), out)
    with pytest.raises(ValueError, match="pool must be 'cls' or 'mean'"):
        ViT(32, pool="max", **VIT)


@pytest.mark.parametrize(
    ("model", "x", "out"),
    [
        (lambda: MLP(32, depth=4, norm="layer"), torch.randn(5, 1, 28, 28), (5, 10)),
        (lambda: ResNet18(4), torch.randn(3, 3, 32, 32), (3, 10)),
        (lambda: ResNet18(4, in_channels=1, num_classes=7), torch.randn(3, 1, 28, 28), (3, 7)),
        (lambda: ViT(16, depth=1, d_head=8, image_size=32), torch.randn(2, 3, 32, 32), (2, 10)),
        (
            lambda: ViT(16, depth=1, d_head=8, patch_size=7, image_size=28, in_channels=1),
            torch.randn(2, 1, 28, 28),
            (2, 10),
        ),
    ],
)
def test_forward_shapes(model, x: torch.Tensor, out: tuple[int, int]) -> None:
    net = model()
    net.eval()
    assert net(x).shape == out


def test_resnet_feature_maps_for_28x28_inputs() -> None:
    sizes = []
    net = ResNet18(4, in_channels=1)
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        stage.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
    net(torch.randn(2, 1, 28, 28))
    assert sizes == [(4, 28, 28), (8, 14, 14), (16, 7, 7), (32, 4, 4)]


def _spec(model: nn.Module, width: int, scheme: str, **kw: object) -> mup2.Parametrization:
    return mup2.Parametrization.infer(model, _meta(type(model), width, **kw), scheme)


@pytest.mark.parametrize(
    ("cls", "width", "kw"),
    [
        (MLP, 32, {"norm": "layer"}),
        (ResNet18, 4, {"in_channels": 1}),
        (ViT, 16, {**VIT, "zero_init": False}),
    ],
)
def test_mup_equals_sp_at_base_width(cls: type[nn.Module], width: int, kw: dict) -> None:
    x = torch.randn(4, 3, 8, 8) if cls is ViT else torch.randn(4, 1, 28, 28)
    outs, rules = [], []
    for scheme in ("sp", "mup-sgd", "mup-adam"):
        model = cls(width, **kw)
        p = _spec(model, width, scheme, **kw)
        rules.append({n: t.init for n, t in p.tensors.items()})
        p.init_(model, seed=3)
        model.eval()
        outs.append(model(x))
    assert rules[0] == rules[1] == rules[2]
    assert all(r.kind != "keep" for r in rules[0].values())  # fully determined by the seed
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_vit_zero_init_is_the_only_difference_from_sp() -> None:
    sp = _spec(ViT(16, zero_init=False, **VIT), 16, "sp", zero_init=False, **VIT)
    mup = _spec(ViT(16, **VIT), 16, "mup-adam", **VIT)
    differ = {n for n in sp.tensors if sp.tensors[n].init != mup.tensors[n].init}
    zero = {n for n in sp.tensors if n.startswith("head.") or ".attn.q." in n}
    assert differ == zero and len(zero) == 2 + 2 * VIT["depth"]
    assert ZERO_INIT_PATTERNS == ("blocks.*.attn.q.*", "head.*")
    model = ViT(16, **VIT)
    mup.init_(model, seed=0)
    logits = model(torch.randn(2, 3, 8, 8))
    assert torch.equal(logits, torch.zeros(2, 10))  # zero readout


def test_init_at_twice_the_base_width() -> None:
    """Above the base width μP keeps hidden stds as PyTorch's (∝ fan_in^-1/2) and shrinks the
    readout by 1/m instead of 1/sqrt(m)."""
    model = ResNet18(16, in_channels=1)
    sp, mup = _spec(model, 8, "sp", in_channels=1), _spec(model, 8, "mup-sgd", in_channels=1)
    for name in ("layer2.0.conv1.weight", "layer4.1.conv2.weight", "stem.weight"):
        assert mup.tensors[name].init.value == pytest.approx(sp.tensors[name].init.value)
    ratio = mup.tensors["fc.weight"].init.value / sp.tensors["fc.weight"].init.value
    assert ratio == pytest.approx(1 / math.sqrt(2))


def test_vit_attention_scale() -> None:
    torch.manual_seed(0)
    attn = ViT(16, **VIT).blocks[0].attn
    assert attn.heads == 2 and attn.scale == pytest.approx(1 / math.sqrt(8))  # SP's at any width
    for p in attn.parameters():
        nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 5, 16)
    q, k, v = (t(x).view(2, 5, 2, 8).transpose(1, 2) for t in (attn.q, attn.k, attn.v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    expected = attn.o((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected)
    tuned = ViT(16, attn_mult=2.0, **VIT).blocks[0].attn
    assert tuned.scale == pytest.approx(2.0 / 8)  # μP: attn_mult / d_head


def test_vit_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of d_head"):
        ViT(20, d_head=8)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViT(16, d_head=8, image_size=30, patch_size=4)


def test_registry() -> None:
    assert sorted(MODELS) == ["mlp", "resmlp", "resnet18", "vit"]
    assert (base_width("mlp"), base_width("resnet18"), base_width("vit")) == (64, 64, 128)
    assert base_width("resmlp") == 64
    rmlp = build_model("resmlp", 32, input_shape=(1, 28, 28), num_classes=10, depth=3)
    assert isinstance(rmlp, ResMLP) and rmlp.embed.in_features == 784 and len(rmlp.blocks) == 3
    assert rmlp(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    mlp = build_model("mlp", 32, input_shape=(1, 28, 28), num_classes=10, depth=4)
    assert isinstance(mlp, MLP) and mlp.features[0].in_features == 784 and mlp.depth == 4
    vit = build_model("vit", 16, input_shape=(1, 28, 28), num_classes=5, d_head=8, patch_size=7)
    assert isinstance(vit, ViT) and vit.pos_embed.shape == (1, 17, 16)
    res = build_model("resnet18", 4, input_shape=(3, 32, 32), num_classes=100)
    assert isinstance(res, ResNet18) and res.fc.out_features == 100
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", 4, input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ValueError, match="square"):
        build_model("vit", 16, input_shape=(3, 32, 16), num_classes=10, d_head=8)
