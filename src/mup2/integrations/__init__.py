"""Optional framework integrations, one module each, imported only on demand.

- :mod:`mup2.integrations.hf`: :class:`~mup2.integrations.hf.SAMTrainer`, a
  ``transformers.Trainer`` with μP param groups and SAM's two passes (extra ``hf``);
- :mod:`mup2.integrations.lightning`: :func:`~mup2.integrations.lightning.sam_step` for a
  ``LightningModule`` under manual optimization (extra ``lightning``).

``import mup2`` imports none of them, nor the frameworks.
"""

__all__: list[str] = []
