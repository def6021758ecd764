"""Shape denoisers of named sizes, composed from ``polydiff.nn`` (nothing re-implemented).

- :func:`point_transformer`: a set transformer over points ``(B, P, 3)``: the adaLN-Zero
  :class:`polydiff.nn.TransformerDenoiser` with ``pos_embedding="none"``, so it is
  permutation-equivariant over points (no positional encoding; points are tokens, as Point-E,
  Nichol et al. 2022, without its image tokens). Class / text conditioning through adaLN, text
  tokens by cross-attention.
- :func:`voxel_unet`: the 3-D ADM :class:`polydiff.nn.UNet` over SDF grids ``(B, 1, R, R, R)`` or
  wavelet coefficient grids ``(B, 8, R/2, R/2, R/2)`` (Hui et al. 2022, "Neural Wavelet-domain
  Diffusion for 3D Shape Generation": coarse + detail coefficients as channels).

Sizes (a size name means one network project-wide, so each family has its prefix; runs saved
with the old bare names ``tiny`` / ``small`` / ``base`` are migrated when opened):

============  ============================  ===========  =======================================
point size    point transformer             voxel size   voxel U-Net
============  ============================  ===========  =======================================
points-tiny   hidden 64, depth 2, 2 heads   voxel-tiny   16 ch, mult (1, 2), 1 block, mid attn
points-w128   hidden 128, depth 2, 4 heads
points-small  hidden 128, depth 4, 4 heads  voxel-small  32 ch, mult (1, 2, 2), 1 block, mid attn
points-base   hidden 256, depth 6, 8 heads  voxel-base   64 ch, mult (1, 2, 2), 2 blocks, mid attn
============  ============================  ===========  =======================================
"""

from __future__ import annotations

from typing import Any

from polydiff.nn import TransformerDenoiser, UNet

__all__ = ["POINT_SIZES", "VOXEL_SIZES", "point_transformer", "voxel_unet"]

POINT_SIZES: dict[str, dict[str, Any]] = {
    "points-tiny": dict(hidden=64, depth=2, heads=2),
    "points-w128": dict(hidden=128, depth=2, heads=4),  # the points_class recipe's
    "points-small": dict(hidden=128, depth=4, heads=4),
    "points-base": dict(hidden=256, depth=6, heads=8),
}

VOXEL_SIZES: dict[str, dict[str, Any]] = {
    "voxel-tiny": dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=8),
    "voxel-small": dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8),
    "voxel-base": dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, norm_groups=16),
}  # attention only in the middle block: full attention over 16^3 voxels costs too much on CPU


def _lookup(table: dict[str, dict[str, Any]], size: str, what: str) -> dict[str, Any]:
    if size not in table:
        raise KeyError(f"unknown {what} size {size!r}; available: {sorted(table)}")
    return dict(table[size])


def _classes(num_classes: int | str | None, source: Any = None) -> int | None:
    """``"auto"``: the data source's class count (None for one class / unlabelled data). An
    explicit class count must agree with ``source`` when one is given (checked here, while the
    model is built: before the run directory exists); None / 0 / 1 is an unconditional model."""
    if num_classes == "auto":
        if source is None:
            raise ValueError("model.num_classes='auto' needs the data source (model.source)")
        num_classes = source.num_classes
    if num_classes in (None, 0, 1):
        return None
    found = getattr(source, "num_classes", None) if source is not None else None
    if source is not None and int(num_classes) != (found or 1):
        raise ValueError(
            f"model.num_classes={num_classes} but the data has {found or 1} class(es); use "
            "model.num_classes=auto (or null for an unconditional model)"
        )
    return int(num_classes)


def point_transformer(
    size: str = "points-small",
    num_classes: int | str | None = None,
    context_dim: int | None = None,
    pooled_dim: int | None = None,
    source: Any = None,
    **overrides: Any,
) -> TransformerDenoiser:
    """Permutation-equivariant point denoiser ``(B, P, 3) -> (B, P, 3)`` of a named size.

    ``num_classes`` <= 1 / None gives an unconditional model (a one-class folder); ``"auto"``
    takes it from ``source`` (a :class:`~polydiff.shapes.experiments.ShapeSource`);
    ``context_dim`` / ``pooled_dim`` add text conditioning (MiniLM tokens / pooled vector)."""
    kw = _lookup(POINT_SIZES, size, "point transformer")
    kw.update(overrides)
    return TransformerDenoiser(
        in_dim=3,
        pos_embedding="none",
        num_classes=_classes(num_classes, source),
        context_dim=context_dim,
        pooled_dim=pooled_dim,
        **kw,
    )


def voxel_unet(
    size: str = "voxel-small",
    channels: int = 1,
    num_classes: int | str | None = None,
    context_dim: int | None = None,
    pooled_dim: int | None = None,
    source: Any = None,
    **overrides: Any,
) -> UNet:
    """3-D U-Net over ``(B, channels, R, R, R)`` grids of a named size (attention in the middle
    block only); ``channels`` 1 for SDF / occupancy, 8 for one-level 3-D wavelet coefficients."""
    kw = _lookup(VOXEL_SIZES, size, "voxel U-Net")
    kw.setdefault("attention_levels", ())
    kw.setdefault("num_heads", 4)
    kw.setdefault("channels_last", True)  # measured 1.2x faster fwd+bwd for 3-D convs on CPU
    kw.update(overrides)
    return UNet(
        dims=3,
        in_channels=channels,
        num_classes=_classes(num_classes, source),
        context_dim=context_dim,
        pooled_dim=pooled_dim,
        **kw,
    )
