"""Every committed experiment config validates, with its grid and every trial's training
config (or, for a sweep of a user objective, the objective's entry point), so that a config
prepared for a GPU machine is known good before it gets one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from mup2.sweep.config import load_sweep_config
from mup2.sweep.grid import expand, trial_config
from mup2.sweep.user import load_objective

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments").rglob("*.toml"))
DEPTH = Path(__file__).resolve().parents[1] / "experiments" / "depth"


def _depth_script(stem: str) -> ModuleType:
    """``experiments/depth/<stem>.py``, imported (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"depth_{stem}", DEPTH / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_and_every_trial_validate(path: Path) -> None:
    cfg = load_sweep_config(path)
    points = expand(cfg)
    assert len(points) == len(set(points)) > 0
    if cfg.user is None:
        for point in points:
            trial_config(cfg, point)  # raises ConfigError on an invalid trial
    else:  # a user objective: it imports and can be called as objective(point, report)
        load_objective(cfg.user.objective, cfg.user.root)
    if path.parent.name == "figure1":  # the width studies
        widths = sorted({p.width for p in points})
        assert len(widths) >= 4 and widths[-1] / widths[0] >= 8


def test_depth_study_configs() -> None:
    """The depth study (experiments/depth/): one config per variant and depth, all in one store,
    every one trained by run.py; the two μP² variants differ only in the base depth."""
    run = _depth_script("run")
    paths = sorted(DEPTH.glob("*.toml"))
    assert sorted(run.ORDER) == sorted(p.stem for p in paths)
    cfgs = {p.stem: load_sweep_config(p) for p in paths}
    assert len({c.storage for c in cfgs.values()}) == 1
    assert len({c.name for c in cfgs.values()}) == len(cfgs)
    for variant, base_depth in (("aware", 2), ("widthonly", None)):
        depths = [2]
        for stem, c in cfgs.items():
            if stem.startswith(f"{variant}-d"):
                model = c.train.model  # type: ignore[union-attr]
                assert model.depth == int(stem.removeprefix(f"{variant}-d"))
                assert (model.width, model.base_depth, c.grid.widths) == (128, base_depth, [128])
                depths.append(model.depth)
        assert sorted(depths) == [2, 4, 8, 16, 32]
    d2 = cfgs["d2"].train.model  # type: ignore[union-attr]
    assert (d2.depth, d2.base_depth) == (2, 2)  # every depth factor 1: both variants' depth 2
    args = run.parse_args(["run", "--batch", "16", "aware-d4", "aware-d16", "--blocks", "3"])
    assert (args.configs, args.batch, args.blocks) == (["aware-d4", "aware-d16"], 16, 3)
    assert run.parse_args(["run"]).configs == list(run.ORDER)
    with pytest.raises(SystemExit):
        run.parse_args(["run", "d3"])  # no such config


def test_depth_gradient_profile() -> None:
    """experiments/depth/gradient_profile.py: one stream RMS, cls-row RMS and gradient norm per
    block; at initialization the stream entering the first block (the embedding) is the same
    with and without the branch multipliers, the next one not; at the base depth (every factor
    1) the two settings are the same after a step. The ViT's readout starts at zero, so no
    gradient reaches the blocks before the first step."""
    import torch

    mod = _depth_script("gradient_profile")
    for steps in (0, 1):
        wide = {a: mod.profile("vit", 4, a, 0, steps, 2) for a in (None, 1.0)}
        for stream, cls, grads in wide.values():
            assert stream.shape == cls.shape == grads.shape == (4,)
            assert bool(torch.isfinite(stream).all()) and bool((cls < stream).all())
            assert bool((grads > 0).all()) == (steps > 0)  # the readout starts at zero
    wide = {a: mod.profile("vit", 4, a, 0, 0, 2) for a in (None, 1.0)}
    assert float(wide[None][0][0]) == float(wide[1.0][0][0])
    assert float(wide[None][0][1]) != float(wide[1.0][0][1])  # block 0's branch: x 1/2 or not
    at_base = [mod.profile("vit", 2, a, 0, 1, 2) for a in (None, 1.0)]
    torch.testing.assert_close(at_base[0], at_base[1], rtol=0, atol=0)
    assert bool(mod.profile("vit-mean", 2, 1.0, 0, 0, 2)[1].isnan().all())  # no cls row


def test_depth_gradient_profile_cls_row() -> None:
    """The finding of docs/math.md §9: under depth-aware μP² the cls token's row stays at its
    init size through the bottom blocks, and the first block's gradient shrinks slower than
    CompleteP's ``D^-1`` (``D·|g_1|`` grows from 2 to 8 blocks); read by the mean of the patch
    tokens, ``D·|g_1|`` stays level, and with the cls token drawn at std 0.5 it grows less."""

    mod = _depth_script("gradient_profile")
    first = {}
    for label, (name, std) in mod.MODELS.items():
        g2, g8 = (float(mod.profile(name, d, 1.0, 0, 10, 2, std)[2][0]) * d / 2 for d in (2, 8))
        first[label] = g8 / g2
    _, cls, _ = mod.profile("vit", 8, 1.0, 0, 10, 2)
    assert float(cls[0]) < 0.05 and float(cls[1]) < 0.1  # TOKEN_STD 0.02, then + O(1/D)
    assert first["vit"] > 1.5, first
    assert first["vit-mean"] < first["vit, cls_token std 0.5"] < first["vit"] - 0.1, first
    assert 0.8 < first["vit-mean"] < 1.25, first  # 1.18, 1.60 and 1.82 at seed 0


@pytest.mark.parametrize(("model", "stack"), [("gpt2", "transformer.h"), ("llama", "model.layers")])
def test_depth_coordcheck_hugging_face(model: str, stack: str) -> None:
    """experiments/depth/coordcheck.py's Hugging Face models: one block per depth, the loss the
    next token's cross-entropy, and the depth check folds their blocks."""
    import torch

    pytest.importorskip("transformers")
    mod = _depth_script("coordcheck")
    make = mod._hf(model, 16)
    assert [sum(1 for _ in make(d).get_submodule(stack)) for d in (2, 3)] == [2, 3]
    tokens = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    out = make(2)(tokens)
    parts = [torch.nn.functional.cross_entropy(out.logits[b, t], tokens[b, t + 1])
             for b in range(2) for t in range(4)]  # fmt: skip
    torch.testing.assert_close(mod._next_token_loss(out, tokens), torch.stack(parts).mean())
    res = mod.coord_check_depth(make, [2, 4, 8], tokens, tokens, loss_fn=mod._next_token_loss)
    names = [lay.name for lay in res.layers]
    for fold in ("#", "first", "last"):
        assert any(n.startswith(f"{stack}.{fold}.") for n in names), (fold, names)
    assert not any(n.startswith(f"{stack}.1.") for n in names)
