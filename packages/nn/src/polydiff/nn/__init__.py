"""polydiff.nn: backbones every modality composes.

Every network has ``forward(x, t, cond=None)`` with ``t`` a float tensor (B,) and ``cond`` None or a
dict of named tensors; conditional networks set ``accepts_null_mask = True`` and honour
``cond["null_mask"]`` (classifier-free guidance). Heavy optional parts (text encoders, LoRA) live
in their own modules and are not imported here.
"""

from .attention import Attention
from .embeddings import (
    ClassEmbedding,
    ConditionEmbedding,
    FourierFeatures,
    SinusoidalEmbedding,
    timestep_embedding,
)
from .mlp import ResidualMLP
from .transformer import DIT_SIZES, DiT, MoEFeedForward, TransformerDenoiser, dit
from .unet import UNET_SIZES, UNet, unet

__all__ = [
    "Attention",
    "ClassEmbedding",
    "ConditionEmbedding",
    "FourierFeatures",
    "DIT_SIZES",
    "DiT",
    "MoEFeedForward",
    "ResidualMLP",
    "TransformerDenoiser",
    "dit",
    "UNET_SIZES",
    "UNet",
    "unet",
    "SinusoidalEmbedding",
    "timestep_embedding",
]
