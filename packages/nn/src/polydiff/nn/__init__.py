"""polydiff.nn: backbones every modality composes.

Every network has ``forward(x, t, cond=None)`` with ``t`` a float tensor (B,) and ``cond`` None or a
dict of named tensors; conditional networks set ``accepts_null_mask = True`` and honour
``cond["null_mask"]`` (classifier-free guidance). Heavy optional parts (``polydiff.nn.text``,
``polydiff.nn.lora``) live in their own modules and are not imported here.
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
from .spacetime import SpaceTimeBlock, TemporalAttention, TemporalConv, VideoUNet
from .transformer import DIT_SIZES, AdaLNZeroBlock, DiT, MoEFeedForward, TransformerDenoiser, dit
from .unet import UNET_SIZES, UNet

# the factory ``unet(size, **overrides)`` stays in ``polydiff.nn.unet`` (exporting it here would
# shadow the submodule: ``import polydiff.nn.unet`` must give the module)

__all__ = [
    "DIT_SIZES",
    "UNET_SIZES",
    "AdaLNZeroBlock",
    "Attention",
    "ClassEmbedding",
    "ConditionEmbedding",
    "DiT",
    "FourierFeatures",
    "MoEFeedForward",
    "ResidualMLP",
    "SinusoidalEmbedding",
    "SpaceTimeBlock",
    "TemporalAttention",
    "TemporalConv",
    "TransformerDenoiser",
    "UNet",
    "VideoUNet",
    "dit",
    "timestep_embedding",
]
