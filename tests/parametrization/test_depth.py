"""Depth in the parametrization (``docs/math.md``, depth): blocks matched with a shallower base,
the residual-branch multipliers ``(L/L0)**-alpha`` (installed, idempotent), the scheme's depth
factors (CompleteP for Adam, their SGD and Muon counterparts), the report, serialization, the
config, and the refusal of models whose blocks cannot be matched."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import mup2
from mup2.config import parse_config
from mup2.models import ResMLP, ViT
from mup2.parametrization.depth import BRANCH_OUTPUTS, DepthSpec, find_stacks
from mup2.parametrization.forward_multipliers import OutputMultiplier, output_multiplier
from mup2.parametrization.schemes import ADAM_DEPTH, MUON_DEPTH, SGD_DEPTH, DepthRule
from mup2.parametrization.shapes import ShapeError
from mup2.roles import Role
from mup2.train import make_model

from nets import DictBlocks, ListBlocks, mlp

X = torch.randn(4, 20, generator=torch.Generator().manual_seed(0))


def _meta(make: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return make()


def _resmlp(width: int, depth: int) -> ResMLP:
    torch.manual_seed(0)
    return ResMLP(width, depth=depth, in_features=20, out_features=5)


# -- the depth factors as data ----------------------------------------------------------------


def _factors(rule: DepthRule, m_in: float, m_out: float, d: float, a: float) -> tuple[float, ...]:
    return tuple(p(m_in, m_out, 1.0, d, a) for p in (rule.lr, rule.eps, rule.wd))


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_depth_rules_written_out(alpha: float) -> None:
    """D = L/L0 = 4, width multiplier 2 (hidden: m_in = m_out = 2; in-block vectors m_out = 2):
    Adam LR D^(a-1), eps m_in^-1 D^-a (hidden), D^-a (vectors), decay m_in D^(1-a) (hidden);
    SGD LR D^(2a-1), decay D^(1-2a); Muon's hidden matrices Adam's LR, decay m_in^1/2 D^(1-a)."""
    d, m, a = 4.0, 2.0, alpha
    assert _factors(ADAM_DEPTH[Role.HIDDEN], m, m, d, a) == pytest.approx(
        (d ** (a - 1), 1 / m * d**-a, m * d ** (1 - a))
    )
    assert _factors(ADAM_DEPTH[Role.INPUT], 1.0, m, d, a) == pytest.approx(
        (d ** (a - 1), d**-a, d ** (1 - a))
    )
    assert _factors(ADAM_DEPTH[Role.OUTPUT], m, 1.0, d, a) == (1.0, 1.0, 1.0)
    for role, fans in ((Role.HIDDEN, (m, m)), (Role.INPUT, (1.0, m))):
        assert _factors(SGD_DEPTH[role], *fans, d, a) == pytest.approx(
            (d ** (2 * a - 1), 1.0, d ** (1 - 2 * a))
        )
    assert _factors(MUON_DEPTH[Role.HIDDEN], m, m, d, a) == pytest.approx(
        (d ** (a - 1), 1.0, math.sqrt(m) * d ** (1 - a))
    )
    # outside the blocks (D = 1) only the width parts remain
    assert _factors(ADAM_DEPTH[Role.INPUT], 1.0, m, 1.0, a) == (1.0, 1.0, 1.0)
    assert mup2.SP.depth is None
    assert mup2.MUP_ADAM.depth is ADAM_DEPTH and mup2.MUP_SGD.depth is SGD_DEPTH


# -- matching a shallower base ----------------------------------------------------------------


def test_resmlp_against_a_shallower_narrower_base() -> None:
    model = _resmlp(128, 8)
    p = mup2.Parametrization.infer(model, _meta(lambda: _resmlp(64, 2)), "mup-adam")
    assert p.depth is not None and p.depth.alpha == 1.0
    (stack,) = p.depth.stacks
    assert (stack.prefix, stack.depth, stack.base_depth, stack.branches) == (
        "blocks",
        8,
        2,
        ("fc2",),
    )
    t = p.tensors
    assert len(t) == len(dict(model.named_parameters()))
    assert t["blocks.7.fc1.weight"].shape.base_shape == (64, 64)  # block 7 <- base block 1
    assert t["blocks.7.fc1.weight"].shape.role is Role.HIDDEN
    # CompleteP (a = 1) at m = 2, D = 4: hidden LR 1/m, eps 1/(m D), decay x m; in-block
    # vectors eps 1/D; outside the blocks μP-Adam
    hidden, bias = t["blocks.3.fc2.weight"], t["blocks.3.fc2.bias"]
    assert (hidden.lr_mult, hidden.eps_mult, hidden.wd_mult, hidden.depth_mult) == (
        0.5,
        0.125,
        2.0,
        4.0,
    )
    assert (bias.lr_mult, bias.eps_mult, bias.wd_mult, bias.depth_mult) == (1.0, 0.25, 1.0, 4.0)
    for name in ("embed.weight", "norm.weight", "head.bias"):
        assert (t[name].eps_mult, t[name].wd_mult, t[name].depth_mult) == (1.0, 1.0, 1.0)
    assert t["head.weight"].lr_mult == 0.5
    assert p.forward_mults == {f"blocks.{i}.fc2": 0.25 for i in range(8)}


def test_alpha_one_half_and_sgd() -> None:
    p = mup2.Parametrization.infer(
        _resmlp(64, 8), _meta(lambda: _resmlp(64, 2)), "mup-sgd", alpha=0.5
    )
    assert set(p.forward_mults.values()) == {0.5}  # 4^-1/2
    assert p.tensors["blocks.0.fc1.weight"].lr_mult == 1.0  # SGD: D^(2a-1) = 1
    p1 = mup2.Parametrization.infer(_resmlp(64, 8), _meta(lambda: _resmlp(64, 2)), "mup-sgd")
    assert p1.tensors["blocks.0.fc1.weight"].lr_mult == 4.0  # a = 1: D
    assert p1.tensors["blocks.0.fc1.weight"].wd_mult == 0.25


def test_width_only_and_same_depth_change_nothing() -> None:
    """``alpha=None`` matches the shallower base and adds nothing; a base of the model's depth
    gives the parametrization of before (no depth, no eps_mult key in the groups)."""
    model = _resmlp(128, 8)
    wide = mup2.Parametrization.infer(model, _meta(lambda: _resmlp(64, 8)), "mup-adam")
    only = mup2.Parametrization.infer(model, _meta(lambda: _resmlp(64, 2)), "mup-adam", alpha=None)
    assert wide.depth is None and wide.forward_mults == {}
    assert only.depth is not None and only.forward_mults == {}
    for n, spec in wide.tensors.items():
        o = only.tensors[n]
        assert (o.lr_mult, o.wd_mult, o.eps_mult, o.init) == (
            spec.lr_mult,
            spec.wd_mult,
            spec.eps_mult,
            spec.init,
        )
    assert all("eps_mult" not in g for g in wide.param_groups(model, lr=1e-3))


def test_explicit_base_depth_with_a_base_of_the_models_depth() -> None:
    model = _resmlp(64, 8)
    p = mup2.Parametrization.infer(model, 1.0, "mup-adam", base_depth=2, depth=8)
    assert p.depth is not None and p.depth.stacks[0].ratio == 4.0
    q = mup2.Parametrization.infer(model, _meta(lambda: _resmlp(64, 2)), "mup-adam")
    assert p.forward_mults == q.forward_mults
    with pytest.raises(ShapeError, match="depth=6 but the model's stack blocks has 8 blocks"):
        mup2.Parametrization.infer(model, 1.0, depth=6, base_depth=2)


def test_branch_multipliers_installed_and_idempotent() -> None:
    model = _resmlp(64, 4)
    p = mup2.Parametrization.infer(model, _meta(lambda: _resmlp(64, 1)), "mup-adam")
    p.init_(model, seed=0)
    p.init_(model, seed=0)
    p.param_groups(model)
    p.attach(model)
    for i, block in enumerate(model.blocks):
        hooks = [h for h in block.fc2._forward_hooks.values() if isinstance(h, OutputMultiplier)]
        assert len(hooks) == 1 and output_multiplier(block.fc2) == 0.25, i
        assert output_multiplier(block.fc1) is None
    # the forward pass: each branch x 1/4
    with torch.no_grad():
        h = model.embed(X)
        for block in model.blocks:
            h = h + 0.25 * nn.functional.linear(
                block.act(block.fc1(block.ln(h))), block.fc2.weight, block.fc2.bias
            )
        want = model.head(model.norm(h))
        torch.testing.assert_close(model(X), want)


def test_eps_multiplier_applies_at_step_time_only() -> None:
    model = _resmlp(128, 4)
    p = mup2.Parametrization.infer(model, _meta(lambda: _resmlp(64, 2)), "mup-adam")
    groups = p.param_groups(model, lr=1e-3)
    opt = mup2.attach_lr_multipliers(torch.optim.AdamW(groups, lr=1e-3, eps=1e-6))
    seen: list[tuple[float, float]] = []

    def record(o: torch.optim.Optimizer, *_: object) -> None:
        seen.extend((g["eps"], g["eps_mult"]) for g in o.param_groups)

    # hooks run in registration order: the multipliers' pre hook first
    opt.register_step_pre_hook(record)
    model(X).sum().backward()
    opt.step()
    assert {round(e / m, 12) for e, m in seen} == {1e-6}
    assert {m for _, m in seen} == {1.0, 0.5, 0.25}  # D = 2, m = 2: vectors 1/D, hidden 1/(mD)
    assert {g["eps"] for g in opt.param_groups} == {1e-6}  # restored


def test_serialization_keeps_the_depth() -> None:
    model = _resmlp(128, 4)
    p = mup2.Parametrization.infer(model, _meta(lambda: _resmlp(64, 2)), "mup-adam", alpha=0.5)
    q = mup2.Parametrization.from_dict(p.to_dict())
    assert q.depth == p.depth and q.tensors == p.tensors and q.forward_mults == p.forward_mults
    assert DepthSpec.from_dict(p.depth.to_dict()) == p.depth  # type: ignore[union-attr]


def test_report_shows_the_depth_factors() -> None:
    p = mup2.Parametrization.infer(_resmlp(128, 8), _meta(lambda: _resmlp(64, 2)), "mup-adam")
    text = p.report()
    header = text.splitlines()[1].split()
    assert header[-2:] == ["L/L0", "eps"]
    row = next(line for line in text.splitlines() if line.startswith("blocks.5.fc1.weight "))
    assert row.split()[-2:] == ["4", "x0.125"]
    assert "depth: blocks: 8 blocks against 2 in the base (L/L0 = 4), alpha = 1: branch " in text
    assert "x0.25 on blocks.N.fc2" in text
    wide = mup2.Parametrization.infer(_resmlp(128, 2), _meta(lambda: _resmlp(64, 2)), "mup-adam")
    assert "L/L0" not in wide.report() and "depth:" not in wide.report()


# -- the built-in ViT and Hugging Face models -------------------------------------------------


def test_vit_blocks_and_branches() -> None:
    vit = ViT(64, depth=6, d_head=16, image_size=8, patch_size=4)
    base = _meta(lambda: ViT(32, depth=2, d_head=16, image_size=8, patch_size=4))
    p = mup2.Parametrization.infer(vit, base, "mup-adam")
    assert p.depth is not None
    (stack,) = p.depth.stacks
    assert (stack.prefix, stack.depth, stack.base_depth) == ("blocks", 6, 2)
    assert stack.branches == ("attn.o", "fc2")
    assert p.forward_mults == {
        f"blocks.{i}.{b}": 1 / 3 for i in range(6) for b in ("attn.o", "fc2")
    }
    assert p.tensors["blocks.5.attn.q.weight"].init_mult == 0.0  # the model's own overrides
    assert len(p.attention) == 6  # every block's attention, the extra ones too
    p.init_(vit, seed=0)
    assert vit(torch.randn(2, 3, 8, 8)).shape == (2, 10)


transformers = pytest.importorskip("transformers")


def _gpt2(width: int, layers: int) -> nn.Module:
    cfg = transformers.GPT2Config(
        n_embd=width, n_layer=layers, n_head=2, vocab_size=64, n_positions=8,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def _llama(width: int, layers: int) -> nn.Module:
    cfg = transformers.LlamaConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, vocab_size=64, max_position_embeddings=8,
        bos_token_id=0, eos_token_id=0, pad_token_id=None,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.parametrize(
    ("make", "prefix", "branches"),
    [
        (_gpt2, "transformer.h", ("attn.c_proj", "mlp.c_proj")),
        (_llama, "model.layers", ("self_attn.o_proj", "mlp.down_proj")),
    ],
    ids=["gpt2", "llama"],
)
def test_hugging_face_blocks(
    make: Callable[[int, int], nn.Module], prefix: str, branches: tuple[str, ...]
) -> None:
    torch.manual_seed(0)
    model = make(64, 4)
    p = mup2.Parametrization.infer(model, _meta(lambda: make(32, 2)), "mup-adam")
    assert p.depth is not None
    (stack,) = p.depth.stacks
    assert (stack.prefix, stack.depth, stack.base_depth, stack.branches) == (
        prefix,
        4,
        2,
        branches,
    )
    assert {k: v for k, v in p.forward_mults.items() if k.startswith(prefix)} == {
        f"{prefix}.{i}.{b}": 0.5 for i in range(4) for b in branches
    }
    assert set(p.tensors) == {n for n, _ in model.named_parameters()}
    hidden = next(t for n, t in p.tensors.items() if n.startswith(f"{prefix}.3.") and
                  t.shape.role is Role.HIDDEN)  # fmt: skip
    assert (hidden.lr_mult, hidden.eps_mult, hidden.wd_mult) == (0.5, 0.25, 2.0)
    p.init_(model, seed=0)
    out = model(torch.randint(0, 64, (2, 8)))
    assert torch.isfinite(out.logits).all()


def test_gpt2_depth_scaled_init_is_drawn_at_the_base_depth() -> None:
    """GPT-2 draws ``c_proj`` at ``0.02 / sqrt(2 n_layer)``. Depth-aware, the branch multiplier
    carries the depth, so a meta base is drawn by its own init at its depth: ``c_proj`` at
    ``0.02 / sqrt(4)`` whatever the model's depth (not ``/ sqrt(16)`` on top of the ``1/4``
    multiplier); width only, the model keeps its own. The caller's RNG is left alone."""
    base = _meta(lambda: _gpt2(32, 2))
    names = ("transformer.h.7.attn.c_proj.weight", "transformer.h.7.mlp.c_proj.weight")
    stds = {}
    for alpha in (1.0, None):
        model = _gpt2(32, 8)
        state = torch.random.get_rng_state()
        p = mup2.Parametrization.infer(model, base, "mup-adam", alpha=alpha)
        assert torch.equal(torch.random.get_rng_state(), state)
        stds[alpha] = [p.tensors[n].init.value for n in names]
        assert p.tensors["transformer.h.7.mlp.c_fc.weight"].init.value == pytest.approx(
            0.02, rel=0.1
        )
    assert stds[1.0] == pytest.approx([0.02 / 2, 0.02 / 2], rel=0.1)
    assert stds[None] == pytest.approx([0.02 / 4, 0.02 / 4], rel=0.1)
    again = mup2.Parametrization.infer(_gpt2(32, 8), base, "mup-adam")
    assert [again.tensors[n].init.value for n in names] == stds[1.0]  # drawn under one seed


# -- refusals ---------------------------------------------------------------------------------


def test_find_stacks() -> None:
    assert list(find_stacks(_resmlp(16, 3))) == ["blocks"]
    assert list(find_stacks(ListBlocks(16, 3))) == ["layers"]
    assert find_stacks(DictBlocks(16, 3)) == {}
    assert find_stacks(mlp(16)) == {}  # a Sequential of layers, not of blocks


def test_blocks_that_cannot_be_matched_are_refused() -> None:
    with pytest.raises(ShapeError) as err:
        mup2.Parametrization.infer(DictBlocks(32, 4), DictBlocks(16, 2))
    assert str(err.value).startswith(
        "the model and the base differ in depth (model tensors ['layers.2.fc.weight', "
        "'layers.2.fc.bias', 'layers.2.proj.weight'] have no counterpart) and their blocks "
        "cannot be matched: mup2 matches blocks by their repeated structure"
    )
    with pytest.raises(ShapeError, match=r"the blocks of layers \(_Residual\) have none of"):
        mup2.Parametrization.infer(ListBlocks(32, 4), ListBlocks(16, 2))
    with pytest.raises(ShapeError, match="depth/base_depth given but the model has no stack"):
        mup2.Parametrization.infer(DictBlocks(32, 4), 2.0, base_depth=2)
    with pytest.raises(ShapeError, match=r"branches \['nope'\] are not modules of the blocks"):
        mup2.Parametrization.infer(ListBlocks(32, 4), ListBlocks(16, 2), branches=["nope"])
    with pytest.raises(TypeError, match="branches must be a sequence"):
        mup2.Parametrization.infer(ListBlocks(32, 4), ListBlocks(16, 2), branches="proj")
    with pytest.raises(TypeError, match="base_depth must be a positive integer or None"):
        mup2.Parametrization.infer(ListBlocks(32, 4), 2.0, base_depth="2")  # type: ignore[arg-type]


def test_branches_named_by_the_caller() -> None:
    p = mup2.Parametrization.infer(ListBlocks(32, 4), ListBlocks(16, 2), branches=("proj",))
    assert p.forward_mults == {f"layers.{i}.proj": 0.5 for i in range(4)}
    assert "proj" not in BRANCH_OUTPUTS


# -- the config -------------------------------------------------------------------------------


def test_config_resmlp_base_depth() -> None:
    def cfg(**model: object) -> mup2.config.TrainConfig:
        return parse_config(
            {
                "model": {"name": "resmlp", "width": 32, "base_width": 16, "depth": 8, **model},
                "data": {"name": "synthetic"},
                "optimizer": {"name": "adamw", "lr": 1e-3},
                "scheme": "mup-adam",
                "epochs": 1,
            }
        )

    _, p = make_model(cfg(base_depth=2), input_shape=(20,), num_classes=5)
    assert p.depth is not None and p.depth.stacks[0].ratio == 4.0 and p.depth.alpha == 1.0
    _, p = make_model(cfg(base_depth=2, alpha=0.5), input_shape=(20,), num_classes=5)
    assert p.depth is not None and p.depth.alpha == 0.5
    _, p = make_model(cfg(), input_shape=(20,), num_classes=5)
    assert p.depth is None  # width only


# -- the perturbation's depth factor and the coordinate check across depth --------------------


@pytest.mark.parametrize(
    ("rule", "power"),
    [("sam", 2.0), ("asam", 2.0), ("asam-layerwise", 2.0), ("sam-on", 2.0), ("msam", 2.0),
     ("rwp", 1.0)],
)  # fmt: skip
def test_perturbation_depth_factor(rule: str, power: float) -> None:
    """μP² multiplies c and s of the blocks' tensors by D^(2a-1) for the ascents that follow the
    gradient (SAM, both ASAMs, SAM-ON, MSAM): x4 at D = 4, a = 1, x1 at a = 1/2; RWP's noise
    by the update's D^(a-1): x1 at a = 1, x1/2 at a = 1/2. The tensors outside the blocks keep
    theirs (the models are at base width, so every width factor is 1)."""
    model = _resmlp(64, 8)
    base = _meta(lambda: _resmlp(64, 2))
    make = {
        "msam": lambda g: mup2.MSAM(g, rho=0.1, momentum=0.9),
        "rwp": lambda g: mup2.RWP(g, rho=0.1),
    }.get(rule, lambda g: mup2.SAM(g, rho=0.1, rule=rule))
    for alpha in (1.0, 0.5):
        want = 4.0 ** (power * alpha - 1)
        p = mup2.Parametrization.infer(model, base, "mup-sgd", alpha=alpha)
        plan = make(p.param_groups(model, lr=0.1)).perturbation_plan()
        c = dict(zip([id(t) for t in plan.params], plan.c.tolist(), strict=True))
        s = dict(zip([id(t) for t in plan.params], plan.s.tolist(), strict=True))
        assert len(c) > 0
        for name, param in model.named_parameters():
            if id(param) not in c:  # SAM-ON: only the normalization layers
                assert rule == "sam-on" and ".ln" not in name and name != "norm.weight", name
                continue
            inside = name.startswith("blocks.")
            assert c[id(param)] == pytest.approx(want if inside else 1.0), name
            if rule != "rwp":  # RWP's noise has no denominator
                assert s[id(param)] == c[id(param)], name


def test_sam_perturbation_depth_factor_in_report_and_lightsam() -> None:
    """The role report's rho column shows SAM's factor; LightSAM's Adam-like ascent takes
    D^(a-1) (1 at a = 1)."""
    model = _resmlp(64, 8)
    base = _meta(lambda: _resmlp(64, 2))
    p = mup2.Parametrization.infer(model, base, "mup-sgd", alpha=1.0)
    rows = {r["name"]: r["rho"] for r in p.rows()}
    assert rows["blocks.3.fc1.weight"] == "x4" and rows["head.weight"] == "x1"
    p = mup2.Parametrization.infer(model, base, "mup-adam")
    light = mup2.LightSAM(p.param_groups(model, lr=1e-3), "adam", rho=0.1)
    assert set(light.perturbation_plan().c.tolist()) == {1.0}  # D^(a-1) = 1 at a = 1


def test_coord_check_depth_flat_under_depth_aware_mup2() -> None:
    """ResMLP width 16, depths 2-8 (base 2), SGD: under depth-aware μP² every block's update and
    effective perturbation, relative to its activation, stays within ±0.25 of flat; CompleteP's
    branches with the width-only perturbation make the blocks' perturbation vanish like 1/D."""
    from mup2.coordcheck.depth import coord_check_depth, depth_batch, depth_factory

    factory = depth_factory("resmlp", 16, in_features=8)
    x, y = depth_batch("resmlp", 16, 8)
    aware = coord_check_depth(factory, [2, 4, 8], x, y, seeds=[0], steps=1, lr=0.1, rho=0.1)
    names = [lay.name for lay in aware.layers]
    assert "blocks.#.fc1" in names and "blocks.last.fc2" in names and "blocks.3.fc1" not in names

    def rel(r: mup2.coordcheck.CoordCheck, layer: str, q: str) -> float:
        return r.slope(layer, q) - r.slope(layer, "activation")

    for layer in ("blocks.#.fc1", "blocks.#.fc2", "blocks.first.fc2", "blocks.last.fc1"):
        for q in ("update", "effective_perturbation"):
            assert abs(rel(aware, layer, q)) < 0.25, (layer, q, rel(aware, layer, q))
    assert aware.slope("blocks.#.fc2", "activation") == pytest.approx(-1.0, abs=0.1)  # D^-1

    def plain(groups: list[dict]) -> mup2.SAM:  # type: ignore[type-arg]
        return mup2.SAM([{k: v for k, v in g.items() if k != "depth_mult"} for g in groups],
                        rho=0.1)  # fmt: skip

    naive = coord_check_depth(factory, [2, 4, 8], x, y, seeds=[0], steps=1, optimizer=plain)
    assert rel(naive, "blocks.#.fc1", "effective_perturbation") < -0.6


def test_block_means_and_the_depth_plot(tmp_path: Path) -> None:
    """:func:`block_means` keeps the blocks' means and the layers outside the stack (the first
    and last blocks go); ``plot_coord_checks(axis="depth")`` draws one titled column per result
    and refuses a titles list of the wrong length or an unknown axis."""
    from mup2.coordcheck import plot_coord_checks
    from mup2.coordcheck.depth import block_means, coord_check_depth, depth_batch, depth_factory

    factory = depth_factory("resmlp", 8, in_features=8)
    x, y = depth_batch("resmlp", 8, 8)
    res = coord_check_depth(factory, [2, 4, 8], x, y, seeds=[0], steps=1, lr=0.1, rho=0.1)
    means = block_means(res)
    names = {lay.name for lay in means.layers}
    assert {"embed", "blocks.#.fc1", "blocks.#.fc2", "head"} <= names
    assert not any(".first." in n or ".last." in n for n in names)
    assert {k[1] for k in means.values} == names
    assert means.slope("blocks.#.fc1", "update") == res.slope("blocks.#.fc1", "update")
    png = plot_coord_checks([means, means], tmp_path / "d.png", axis="depth", titles=["a", "b"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="1 titles for 2 results"):
        plot_coord_checks([means, means], tmp_path / "e.png", axis="depth", titles=["a"])
    with pytest.raises(ValueError, match="axis must be 'width' or 'depth'"):
        plot_coord_checks([means], tmp_path / "f.png", axis="layers")  # type: ignore[arg-type]


def test_depth_records_label_each_setting() -> None:
    """:func:`depth_records`: the slope records of each labelled result with its ``setting``,
    every step or one step (``-1``: the last, recorded with its own index)."""
    from mup2.coordcheck import records
    from mup2.coordcheck.depth import (
        coord_check_depth,
        depth_batch,
        depth_factory,
        depth_records,
    )

    factory = depth_factory("resmlp", 8, in_features=8)
    x, y = depth_batch("resmlp", 8, 8)
    res = coord_check_depth(factory, [2, 4, 8], x, y, seeds=[0], steps=2, lr=0.1, rho=0.1)
    every = depth_records([("a", res), ("b", res)])
    assert len(every) == 2 * len(records([res])) == 4 * len(records([res], -1))
    assert [r["setting"] for r in every] == ["a"] * (len(every) // 2) + ["b"] * (len(every) // 2)
    last = depth_records([("a", res)], step=-1)
    assert {r["step"] for r in last} == {1}
    assert [dict(r, setting=None) for r in last] == [
        dict(r, setting=None) for r in records([res], -1)
    ]


def test_sp_matches_a_shallower_base_and_scales_nothing() -> None:
    p = mup2.Parametrization.infer(_resmlp(64, 8), _meta(lambda: _resmlp(64, 2)), "sp")
    assert p.forward_mults == {} and p.depth is not None and p.depth.stacks[0].branches == ()
    assert {t.lr_mult for t in p.tensors.values()} == {1.0}
    assert "width only (alpha=None, or a scheme without depth rules)" in p.report()
