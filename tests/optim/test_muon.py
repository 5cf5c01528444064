"""``mup2.optim.MuonAdamW`` and the ``muon`` family: Muon on the hidden matrices, AdamW on the
rest, one optimizer that SAM and LightSAM wrap; ``mup-muon``'s LR multipliers on a real model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import mup2
from mup2.config import parse_config
from mup2.models import MLP
from mup2.optim.muon import ADJUST_LR_FN, MuonAdamW, uses_muon
from mup2.train import make_model, make_optimizer

X = torch.randn(16, 20, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(1))


def _model(width: int) -> MLP:
    torch.manual_seed(0)
    return MLP(width, depth=4, in_features=20, out_features=5)


def _groups(width: int = 64, lr: float = 0.01) -> tuple[MLP, list[dict]]:
    model = _model(width)
    p = mup2.Parametrization.infer(model, _model(16), "mup-muon")
    return model, p.param_groups(model, lr=lr, weight_decay=0.1)


def test_groups_split_by_role() -> None:
    _, groups = _groups()
    opt = MuonAdamW(groups, lr=0.01)
    muon, adam = opt.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adam, torch.optim.AdamW)
    assert [g["role"] for g in muon.param_groups] == ["hidden"]
    assert sorted(g["role"] for g in adam.param_groups) == ["input", "output", "scalar"]
    names = {n for g in muon.param_groups for n in g["names"]}
    assert names == {"features.2.weight", "features.4.weight"}
    # the groups are shared, and so is the state
    ids = {id(g) for g in opt.param_groups}
    assert all(id(g) in ids for o in (muon, adam) for g in o.param_groups)
    assert muon.state is opt.state and adam.state is opt.state
    assert muon.param_groups[0]["adjust_lr_fn"] == ADJUST_LR_FN == "match_rms_adamw"
    assert uses_muon({"muon": False, "role": "hidden"}) is False
    assert uses_muon({"params": []}) is False


def test_mup_muon_lr_multipliers() -> None:
    """Width 64 against 16 (m = 4): Muon's hidden matrices x m^-1/2, AdamW's input-like x 1,
    output-like x 1/m, the readout bias (scalar-like) x 1."""
    _, groups = _groups(64)
    got = {g["role"]: g["lr_mult"] for g in groups}
    assert got == {"input": 1.0, "hidden": 0.5, "output": 0.25, "scalar": 1.0}


def test_one_step_is_torch_muon_and_adamw_with_the_multipliers() -> None:
    model, groups = _groups(64, lr=0.02)
    ref = copy.deepcopy(model)
    opt = mup2.attach_lr_multipliers(MuonAdamW(groups, lr=0.02, weight_decay=0.1))
    F.cross_entropy(model(X), Y).backward()
    opt.step()
    F.cross_entropy(ref(X), Y).backward()
    params = dict(ref.named_parameters())
    for g in groups:
        ps = [params[n] for n in g["names"]]
        lr = 0.02 * g["lr_mult"]
        if g["role"] == "hidden":
            torch.optim.Muon(ps, lr=lr, weight_decay=0.1, adjust_lr_fn="match_rms_adamw").step()
        else:
            torch.optim.AdamW(ps, lr=lr, weight_decay=0.1).step()
    for (n, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert [g["lr"] for g in opt.param_groups] == [0.02] * len(groups)  # base LRs restored


def _closure(model: torch.nn.Module, opt: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(X), Y)
        loss.backward()
        return loss

    return closure


def test_sam_wraps_muon_adamw_and_resumes_bit_for_bit() -> None:
    model, groups = _groups()
    opt = mup2.SAM(groups, MuonAdamW, rho=0.05, lr=0.01, weight_decay=0.1)
    losses = [float(opt.step(_closure(model, opt))) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    state = copy.deepcopy(opt.state_dict())
    kinds = {tuple(sorted(s)) for s in state["base_optimizer"]["state"].values()}
    assert kinds == {("momentum_buffer",), ("exp_avg", "exp_avg_sq", "step")}
    twin = copy.deepcopy(model)
    _, groups2 = _groups()
    opt2 = mup2.SAM(
        [{**g, "params": [dict(twin.named_parameters())[n] for n in g["names"]]} for g in groups2],
        MuonAdamW,
        rho=0.05,
        lr=0.01,
        weight_decay=0.1,
    )
    opt2.load_state_dict(state)
    opt.step(_closure(model, opt))
    opt2.step(_closure(twin, opt2))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lightsam_wraps_muon_adamw() -> None:
    model, groups = _groups()
    opt = mup2.LightSAM(groups, "adam", lr=0.01, rho=0.05, base_optimizer=MuonAdamW, momentum=0.9)
    assert isinstance(opt.base_optimizer, MuonAdamW)
    assert opt.base_optimizer.parts[0].param_groups[0]["momentum"] == 0.9
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(_closure(model, opt))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(TypeError, match="keywords of another descent go with base_optimizer"):
        mup2.LightSAM(groups, "adam", momentum=0.9)


@pytest.mark.parametrize("width", [16, 32])
def test_config_muon_trains_under_sam_and_lightsam(width: int) -> None:
    """At base width too (16), where the shapes tell no roles, the hidden matrices take Muon
    (their roles come from the model at twice the width)."""
    for sam in ({"rho": 0.05}, {"rho": 0.05, "rule": "lightsam"}):
        cfg = parse_config(
            {
                "model": {"name": "mlp", "width": width, "base_width": 16},
                "data": {"name": "synthetic"},
                "optimizer": {"name": "muon", "lr": 0.01, "momentum": 0.9},
                "scheme": "mup-muon",
                "sam": sam,
                "epochs": 1,
            }
        )
        model, p = make_model(cfg, input_shape=(20,), num_classes=5)
        opt = make_optimizer(cfg, model, p)
        assert isinstance(opt.base_optimizer, MuonAdamW)
        assert isinstance(opt, mup2.LightSAM) is (sam.get("rule") == "lightsam")
        muon = opt.base_optimizer.parts[0]
        assert isinstance(muon, torch.optim.Muon)
        assert [g["names"] for g in muon.param_groups] == [["features.2.weight"]]
        opt.step(_closure(model, opt))
