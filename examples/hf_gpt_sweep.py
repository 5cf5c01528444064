"""A GPT-2-style byte-level language model from ``transformers``, trained with mup2's
``SAMTrainer`` under μP², as a sweep of (width, η, ρ, seed): does η* and ρ* transfer?

The corpus exists on every machine with Python: the bytes of the standard library's top-level
``*.py`` files (``sysconfig.get_paths()["stdlib"]``), sorted by name and concatenated, cut to
``train_kb + val_kb`` kilobytes; the first ``train_kb`` are the training set, the rest the
validation set (other files, later in the alphabet). Byte-level: the vocabulary is the 256 byte
values, no tokenizer. Different Python versions ship different files, so the settings carry the
corpus's sha256 (``corpus_sha256``): a machine whose corpus differs refuses to train (set it to
``""`` to accept any corpus, e.g. in a test).

The model: ``GPT2LMHeadModel(GPT2Config(n_embd=width, n_layer, n_head, n_positions=seq,
vocab_size=256))``, the readout tied to the embedding. Heads are fixed, so the head dimension
grows with width and μP's ``1/d_head`` attention applies (mup2 sets it). The base model is the
same at ``base_width`` on the meta device. The optimizer is SAM around AdamW without weight
decay (``mup-adam``), the
learning rate warmed up then cosine-decayed by the Trainer. The metric is the validation loss
(nats per byte), minimized; the validation loss at each evaluation is reported as the run's
curve.

Run ``python examples/hf_gpt_sweep.py`` for a quick grid (``runs/hf-gpt-quick.db``); the study is
``experiments/hf-gpt/study.toml`` (``mup2 sweep experiments/hf-gpt/study.toml``).
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import transformers

import mup2.sweep
from mup2.integrations.hf import SAMTrainer

__all__ = ["SETTINGS", "corpus", "gpt2", "objective"]

#: The study's settings (``point.settings``); a test shrinks them.
SETTINGS: dict[str, Any] = {
    "train_kb": 64,  # training bytes, in KiB
    "val_kb": 8,  # validation bytes, in KiB
    "corpus_sha256": "",  # filled in by experiments/hf-gpt; "" accepts any corpus
    "seq": 64,  # bytes per sequence (= n_positions)
    "batch": 16,  # sequences per step
    "steps": 300,  # optimizer steps
    "warmup": 15,  # linear warm-up steps before the cosine decay
    "evals": 3,  # validation evaluations during the run (the reported curve)
    "n_layer": 2,
    "n_head": 4,
    "base_width": 64,
}


@lru_cache(maxsize=4)
def corpus(kilobytes: int) -> bytes:
    """The first ``kilobytes`` KiB of the sorted top-level ``*.py`` files of the standard
    library, concatenated."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    need, parts, have = kilobytes * 1024, [], 0
    for path in sorted(stdlib.glob("*.py")):
        data = path.read_bytes()
        parts.append(data)
        have += len(data)
        if have >= need:
            break
    text = b"".join(parts)
    if len(text) < need:
        raise ValueError(f"the standard library in {stdlib} has only {len(text)} bytes of *.py")
    return text[:need]


def corpus_sha256(kilobytes: int) -> str:
    """The sha256 of :func:`corpus` (hex)."""
    return hashlib.sha256(corpus(kilobytes)).hexdigest()


def _sequences(data: bytes, seq: int) -> list[dict[str, torch.Tensor]]:
    """Non-overlapping ``seq``-byte windows as ``{"input_ids", "labels"}`` (the model shifts)."""
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    rows = ids[: len(ids) // seq * seq].view(-1, seq)
    return [{"input_ids": r, "labels": r} for r in rows]


def gpt2(width: int, settings: dict[str, Any]) -> transformers.GPT2LMHeadModel:
    """The byte-level GPT-2 at ``n_embd = width`` (no dropout: runs differ only by seed)."""
    cfg = transformers.GPT2Config(
        vocab_size=256,
        n_positions=settings["seq"],
        n_embd=width,
        n_layer=settings["n_layer"],
        n_head=settings["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


class _Curve(transformers.TrainerCallback):  # type: ignore[misc]
    """Hands each evaluation's loss to the sweep's reporter."""

    def __init__(self, report: mup2.sweep.Reporter) -> None:
        self.report = report

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any):
        loss = float((metrics or {}).get("eval_loss", math.nan))
        self.report.report(loss, state.global_step)


def objective(point: mup2.sweep.Point, report: mup2.sweep.Reporter) -> dict[str, float]:
    """Train one grid point; return ``{"val_loss", "train_loss"}`` (the sweep minimizes
    ``val_loss``). ``point.settings`` holds :data:`SETTINGS`' keys."""
    transformers.logging.set_verbosity_error()  # no notes per run in the sweep's log
    s = {**SETTINGS, **point.settings}
    text = corpus(s["train_kb"] + s["val_kb"])
    digest = hashlib.sha256(text).hexdigest()
    if s["corpus_sha256"] and digest != s["corpus_sha256"]:
        raise RuntimeError(
            f"this machine's standard-library corpus has sha256 {digest}, the study's is "
            f"{s['corpus_sha256']}: another Python version, whose runs are not comparable"
        )
    cut = s["train_kb"] * 1024
    model = gpt2(point.width, s)
    with torch.device("meta"):
        base = gpt2(s["base_width"], s)
    parametrization = point.parametrize(model, base)  # μP roles; init drawn from point.seed
    with tempfile.TemporaryDirectory() as out:  # the Trainer's output_dir; nothing is saved
        args = transformers.TrainingArguments(
            output_dir=out,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=point.seed,
            max_steps=s["steps"],
            per_device_train_batch_size=s["batch"],
            per_device_eval_batch_size=64,
            learning_rate=point.lr,
            weight_decay=0.0,
            lr_scheduler_type="cosine",
            warmup_steps=s["warmup"],
            max_grad_norm=0.0,
            eval_strategy="steps",
            eval_steps=max(1, s["steps"] // s["evals"]),
            logging_strategy="no",
            disable_tqdm=True,
        )
        trainer = SAMTrainer(
            model=model,
            args=args,
            train_dataset=_sequences(text[:cut], s["seq"]),
            eval_dataset=_sequences(text[cut:], s["seq"]),
            parametrization=parametrization,
            sam_kwargs={
                "base_optimizer": torch.optim.AdamW,
                "rho": point.rho,
                "scaling": point.scaling,
            },
            callbacks=[_Curve(report)],
        )
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no log lines
        result = trainer.train()
        last = [h for h in trainer.state.log_history if "eval_loss" in h][-1]
        if last["step"] != s["steps"]:  # steps not a multiple of the evaluation interval
            last = trainer.evaluate()
    return {"val_loss": float(last["eval_loss"]), "train_loss": float(result.training_loss)}


if __name__ == "__main__":  # a quick look (2 CPU-minutes); the study: experiments/hf-gpt/
    mup2.sweep.run(
        objective,
        name="hf-gpt-quick",
        storage="sqlite:///runs/hf-gpt-quick.db",
        grid={
            "parametrizations": ["mup2"],
            "widths": [64, 128],
            "lr": [0.002, 0.004],
            "rho": [0.0, 0.01],
            "seeds": [0],
        },
        metric="val_loss",
        direction="minimize",
        version="gpt2-bytes-quick-1",
        optimizer="adamw",
        settings={"steps": 150},
        mkdir=True,  # runs/ may not exist yet
    )
