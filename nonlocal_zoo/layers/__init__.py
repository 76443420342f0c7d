"""Keras layers of nonlocal_zoo: the non-local block and the pieces of the ResNet video backbones."""
from nonlocal_zoo.layers.affine import Affine
from nonlocal_zoo.layers.folding import fold_into_conv, folding_disabled
from nonlocal_zoo.layers.nonlocal_block import NonLocalBlock

__all__ = ["Affine", "NonLocalBlock", "fold_into_conv", "folding_disabled"]
