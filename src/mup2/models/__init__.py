"""Width-parametrized models whose roles mup2 infers without hand-written overrides."""

from mup2.models.mlp import MLP
from mup2.models.registry import MODELS, base_width, build_model
from mup2.models.resmlp import ResMLP
from mup2.models.resnet import ResNet18
from mup2.models.vit import ViT

__all__ = ["MLP", "MODELS", "ResMLP", "ResNet18", "ViT", "base_width", "build_model"]
