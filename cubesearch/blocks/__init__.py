"""The Cube Kernel block (docs/design.md §1) and its pieces."""

from cubesearch.blocks.config import CubeConfig, lattice_channels
from cubesearch.blocks.cost import BlockCost, block_cost
from cubesearch.blocks.cube import (
    CubeBlock,
    CubeUnit,
    FoldedCubeBlock,
    FoldedCubeUnit,
    fold_blocks,
)
from cubesearch.blocks.layers import (
    ChannelRouter,
    LatticeConv,
    SpatialAttention,
    inverse_reconstruct,
    lattice_order,
    reconstruct,
)

__all__ = [
    "BlockCost",
    "ChannelRouter",
    "CubeBlock",
    "CubeConfig",
    "CubeUnit",
    "FoldedCubeBlock",
    "FoldedCubeUnit",
    "LatticeConv",
    "SpatialAttention",
    "block_cost",
    "fold_blocks",
    "inverse_reconstruct",
    "lattice_channels",
    "lattice_order",
    "reconstruct",
]
