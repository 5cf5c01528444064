"""Table 1 (docs/table1.md) measured on the project's ResNet-18 and ViT and on Hugging Face GPT-2.

Small widths, one fixed batch, a few steps, float64; writes markdown tables to stdout. Needs the
``hf`` extra for GPT-2. About 10 minutes on 2 cores::

    .venv/bin/python scripts/table1_models.py > /tmp/table1_models.md
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from mup2.coordcheck import format_table1, table1
from mup2.models import ResNet18, ViT


def gpt2(width: int, vocab: int = 64, seq: int = 8) -> nn.Module:
    import transformers

    cfg = transformers.GPT2Config(
        n_embd=width,
        n_layer=2,
        n_head=width // 16,
        vocab_size=vocab,
        n_positions=seq,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def lm_loss(out: object, targets: Tensor) -> Tensor:
    logits = out.logits  # type: ignore[attr-defined]
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,vit,gpt2")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(8, 3, 16, 16, generator=gen)
    cls = torch.randint(0, 10, (8,), generator=gen)
    tokens = torch.randint(0, 64, (4, 8), generator=gen)
    setups: dict[str, tuple[Callable[[int], nn.Module], tuple[int, ...], Tensor, Tensor, dict]] = {
        "resnet18": (partial(ResNet18, in_channels=3), (8, 16, 32), img, cls, {}),
        "vit": (
            partial(ViT, depth=2, d_head=16, patch_size=4, image_size=16),
            (32, 64, 128, 256),
            img,
            cls,
            {},
        ),
        "gpt2": (gpt2, (64, 128, 256, 512), tokens, tokens, {"loss_fn": lm_loss, "rho": 0.05}),
    }
    for name in args.models.split(","):
        factory, widths, x, y, kw = setups[name]
        t0 = time.time()
        results = table1(
            factory, widths, x, y, scheme="mup-sgd", steps=args.steps, seeds=(0,), **kw
        )
        print(f"\n### {name}, widths {list(widths)} ({time.time() - t0:.0f} s)\n")
        print(format_table1(results))
        print("\nupdates:\n")
        print(format_table1([r for r in results if r.rule == "sam"], quantity="update"))


if __name__ == "__main__":
    main()
