"""Hugging Face GPT-2 and Llama through the plain path: roles tensor by tensor, initial loss,
attention scaling and coordinate-check slopes, with heads fixed and with head_dim fixed.
Small configs built offline; nothing downloads."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from mup2 import Parametrization  # noqa: E402
from mup2.coordcheck import CoordCheck, coord_check  # noqa: E402

VOCAB, SEQ, LAYERS = 64, 8, 2
WIDTHS = (32, 64, 128, 256)


def gpt2(width: int, fixed: str = "heads") -> nn.Module:
    """GPT-2 at ``width``: 2 heads (``fixed="heads"``, head_dim grows) or head_dim 16."""
    heads = 2 if fixed == "heads" else width // 16
    cfg = transformers.GPT2Config(
        n_embd=width,
        n_layer=LAYERS,
        n_head=heads,
        vocab_size=VOCAB,
        n_positions=SEQ,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def llama(width: int, fixed: str = "heads") -> nn.Module:
    heads = 2 if fixed == "heads" else width // 16
    cfg = transformers.LlamaConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=LAYERS,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
    )
    return transformers.LlamaForCausalLM(cfg)


MODELS: dict[str, Callable[..., nn.Module]] = {"gpt2": gpt2, "llama": llama}


def _meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


def _loss(out: object, targets: Tensor) -> Tensor:
    logits = out.logits  # type: ignore[attr-defined]
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _tokens() -> Tensor:
    return torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(0))


GPT2_ROLES = {  # heads fixed, width 256 against 64: every tensor of one block
    "transformer.wte.weight": ("input", 1, 4),
    "transformer.wpe.weight": ("input", 1, 4),
    "transformer.h.0.ln_1.weight": ("input", 1, 4),
    "transformer.h.0.ln_1.bias": ("input", 1, 4),
    "transformer.h.0.attn.c_attn.weight": ("hidden", 4, 4),
    "transformer.h.0.attn.c_attn.bias": ("input", 1, 4),
    "transformer.h.0.attn.c_proj.weight": ("hidden", 4, 4),
    "transformer.h.0.attn.c_proj.bias": ("input", 1, 4),
    "transformer.h.0.ln_2.weight": ("input", 1, 4),
    "transformer.h.0.ln_2.bias": ("input", 1, 4),
    "transformer.h.0.mlp.c_fc.weight": ("hidden", 4, 4),
    "transformer.h.0.mlp.c_fc.bias": ("input", 1, 4),
    "transformer.h.0.mlp.c_proj.weight": ("hidden", 4, 4),
    "transformer.h.0.mlp.c_proj.bias": ("input", 1, 4),
    "transformer.ln_f.weight": ("input", 1, 4),
    "transformer.ln_f.bias": ("input", 1, 4),
}
LLAMA_ROLES = {
    "model.embed_tokens.weight": ("input", 1, 4),
    "model.layers.0.self_attn.q_proj.weight": ("hidden", 4, 4),
    "model.layers.0.self_attn.k_proj.weight": ("hidden", 4, 4),
    "model.layers.0.self_attn.v_proj.weight": ("hidden", 4, 4),
    "model.layers.0.self_attn.o_proj.weight": ("hidden", 4, 4),
    "model.layers.0.mlp.gate_proj.weight": ("hidden", 4, 4),
    "model.layers.0.mlp.up_proj.weight": ("hidden", 4, 4),
    "model.layers.0.mlp.down_proj.weight": ("hidden", 4, 4),
    "model.layers.0.input_layernorm.weight": ("input", 1, 4),
    "model.layers.0.post_attention_layernorm.weight": ("input", 1, 4),
    "model.norm.weight": ("input", 1, 4),
    "lm_head.weight": ("output", 4, 1),
}


@pytest.mark.parametrize("fixed", ["heads", "head_dim"])
@pytest.mark.parametrize("scheme", ["mup-sgd", "mup-adam"])
def test_gpt2_roles(fixed: str, scheme: str) -> None:
    model = gpt2(256, fixed)
    p = Parametrization.infer(model, _meta(lambda: gpt2(64, fixed)), scheme)
    got = {
        n: (t.shape.role.value, t.shape.m_in, t.shape.m_out)
        for n, t in p.tensors.items()
        if ".h.1." not in n
    }
    assert got == GPT2_ROLES
    wte = p.tensors["transformer.wte.weight"]
    assert wte.shape.aliases == ("lm_head.weight",)
    assert wte.shape.use_role("lm_head.weight").value == "output"
    assert p.forward_mults == {"lm_head": 0.25}
    assert wte.lr_mult == (4.0 if scheme == "mup-sgd" else 1.0)
    c_attn = p.tensors["transformer.h.0.attn.c_attn.weight"]
    assert c_attn.init.kind == "normal"  # HF's N(0, 0.02), x m^-1/2
    assert c_attn.init.value == pytest.approx(0.01, rel=0.05)
    assert p.tensors["transformer.wte.weight"].init.value == pytest.approx(0.02, rel=0.05)
    assert p.tensors["transformer.h.0.ln_1.weight"].shape.norm
    c_proj = p.tensors["transformer.h.0.attn.c_proj.weight"]  # HF: 0.02 / sqrt(2 n_layer)
    assert c_proj.init.value == pytest.approx(0.02 / math.sqrt(2 * LAYERS) / 2, rel=0.05)


@pytest.mark.parametrize("fixed", ["heads", "head_dim"])
def test_llama_roles(fixed: str) -> None:
    model = llama(256, fixed)
    p = Parametrization.infer(model, _meta(lambda: llama(64, fixed)), "mup-adam")
    got = {
        n: (t.shape.role.value, t.shape.m_in, t.shape.m_out)
        for n, t in p.tensors.items()
        if ".layers.1." not in n
    }
    assert got == LLAMA_ROLES
    assert p.tensors["model.norm.weight"].shape.norm  # LlamaRMSNorm, recognized by name
    assert p.tensors["lm_head.weight"].init.value == pytest.approx(0.02 / 4, rel=0.05)
    assert p.forward_mults == {}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("fixed", ["heads", "head_dim"])
def test_attention_scaling(name: str, fixed: str) -> None:
    factory = MODELS[name]
    model = factory(256, fixed)
    p = Parametrization.infer(model, _meta(lambda: factory(64, fixed)), "mup-sgd")
    p.init_(model, seed=0)
    attn = [m for m in model.modules() if hasattr(m, "scaling") and hasattr(m, "head_dim")]
    assert len(attn) == LAYERS
    for m in attn:
        if fixed == "heads":  # head_dim 32 -> 128: 1/sqrt(32) * 32/128
            assert m.scaling == pytest.approx(32**-0.5 / 4)
        else:
            assert m.scaling == pytest.approx(16**-0.5)
    assert ("1/d_head" if fixed == "heads" else "no change needed") in p.report()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("fixed", ["heads", "head_dim"])
def test_initial_loss_is_near_uniform_at_every_width(name: str, fixed: str) -> None:
    factory = MODELS[name]
    tokens = _tokens()
    base = _meta(lambda: factory(WIDTHS[0], fixed))
    for width in WIDTHS:
        torch.manual_seed(0)
        model = factory(width, fixed)
        Parametrization.infer(model, base, "mup-sgd").init_(model, seed=0)
        with torch.no_grad():
            loss = _loss(model(tokens), tokens).item()
        assert abs(loss - math.log(VOCAB)) <= 1.0, (width, loss)


CC_WIDTHS = (64, 128, 256, 512)


def _cc(name: str, fixed: str, scheme: str, scaling: str) -> CoordCheck:
    tokens = _tokens()
    lr = 0.1 if scheme == "mup-sgd" else 1e-3
    kwargs = {"base_optimizer": torch.optim.Adam} if scheme == "mup-adam" else {}
    return coord_check(
        partial(MODELS[name], fixed=fixed),
        CC_WIDTHS,
        tokens,
        tokens,
        scheme=scheme,
        scaling=scaling,
        lr=lr,
        rho=0.05,
        loss_fn=_loss,
        steps=2,
        **kwargs,  # type: ignore[arg-type]
    )


def _off(r: CoordCheck, fixed: str) -> list[tuple[str, str, float]]:
    """Layers whose activation, update or effective perturbation is not width-stable, except
    what μP itself predicts at init: the readout's logits shrink like m^-1/2 (output init 1/m;
    their update is checked), and with head_dim growing (``fixed="heads"``) the query/key
    gradients, hence the q/k updates, perturbations and attention-logit changes of the first
    steps, vanish (dL/dlogits is a sum of d_head uncorrelated terms at init); those must not
    grow."""
    out = []
    for s in r.slopes():
        if s.quantity == "total_perturbation" or (
            s.group == "attention" and s.quantity == "effective_perturbation"
        ):
            continue
        if s.layer == "lm_head" and s.quantity == "activation":
            ok = -0.6 <= s.slope <= 0.25
        elif fixed == "heads" and (
            s.group == "attention" or s.layer.endswith(("q_proj", "k_proj"))
        ):
            ok = -0.75 <= s.slope <= 0.25
        else:
            ok = abs(s.slope) <= 0.25
        if not ok:
            out.append((s.layer, s.quantity, round(s.slope, 2)))
    return out


@pytest.mark.parametrize(
    ("name", "fixed", "scheme"),
    [  # both models, both ways of growing, both schemes (each pair once, to keep the suite quick)
        ("gpt2", "heads", "mup-sgd"),
        ("gpt2", "head_dim", "mup-adam"),
        ("llama", "heads", "mup-adam"),
        ("llama", "head_dim", "mup-sgd"),
    ],
)
@pytest.mark.slow
def test_mup2_coordinate_check(name: str, fixed: str, scheme: str) -> None:
    r = _cc(name, fixed, scheme, "mup2")
    assert not _off(r, fixed), _off(r, fixed)
    logits = [s for s in r.slopes() if s.group == "attention" and s.quantity == "update"]
    assert len(logits) == LAYERS
    if fixed == "head_dim":
        assert all(abs(s.slope) <= 0.25 for s in logits), [(s.layer, s.slope) for s in logits]


@pytest.mark.slow
@pytest.mark.parametrize("scaling", ["naive", "global"])
def test_naive_and_global_leave_hidden_layers_unperturbed(scaling: str) -> None:
    """Untied Llama, as the paper's MLP (GPT-2's tied readout is input-like in the norm, so
    there naive SAM keeps some hidden layers: docs/transformers.md)."""
    r = _cc("llama", "head_dim", "mup-sgd", scaling)
    hidden = [
        s for s in r.slopes() if s.group == "hidden-like" and s.quantity == "effective_perturbation"
    ]
    slopes = [s.slope for s in hidden]
    # the note: -0.5 (naive) and -1 (global) in the limit; flatter at these small widths
    assert len(slopes) == 7 * LAYERS and max(slopes) <= -0.1, slopes
    assert sum(slopes) / len(slopes) <= (-0.25 if scaling == "naive" else -0.6), slopes


def test_bert_tied_decoder_and_attention() -> None:
    def bert(width: int) -> nn.Module:
        cfg = transformers.BertConfig(
            hidden_size=width,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=2 * width,
            vocab_size=VOCAB,
            max_position_embeddings=SEQ,
        )
        return transformers.BertForMaskedLM(cfg)

    model = bert(128)
    p = Parametrization.infer(model, _meta(lambda: bert(32)), "mup-sgd")
    p.init_(model, seed=0)
    assert p.forward_mults == {"cls.predictions.decoder": 0.25}
    emb = p.tensors["bert.embeddings.word_embeddings.weight"]
    assert emb.shape.role.value == "input"
    query = p.tensors["bert.encoder.layer.0.attention.self.query.weight"]
    assert query.shape.role.value == "hidden"
    attn = model.bert.encoder.layer[0].attention.self
    assert attn.scaling == pytest.approx(16**-0.5 * 16 / 64)
