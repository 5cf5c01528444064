"""Width-parametrized models whose roles mup2 infers without overrides."""

from mup2.models.mlp import MLP

__all__ = ["MLP"]
