"""Backbone kinds (``vit``: CLIP ViT, ``resnet``: CLIP ModifiedResNet) behind one interface."""

from model.backbones import resnet, vit  # noqa: F401  (fill the registry)
from model.backbones.base import BACKBONES, Backbone, interpolate_pos_embed, make_backbone

__all__ = ["BACKBONES", "Backbone", "interpolate_pos_embed", "make_backbone"]
