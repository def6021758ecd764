"""MDM (Tevet et al. 2023, "Human Motion Diffusion Model") over ``polydiff.nn``'s transformer.

A transformer encoder over frames (B, T, 263) with sinusoidal frame positions, the diffusion
time, pooled text (MiniLM in place of CLIP) and/or an action class entering through adaLN-Zero
modulation (:class:`polydiff.nn.TransformerDenoiser`; MDM prepends them as one token, the same
information), padded frames masked by ``cond["seq_mask"]``, condition dropout for CFG by
``null_mask``. Trained with x0 prediction (MDM sec. 3) by the core objective.
"""

from __future__ import annotations

from typing import Any

from polydiff.nn import TransformerDenoiser

__all__ = ["MOTION_SIZES", "mdm"]

# depth / hidden / heads; "mdm" is the paper's (8 layers, 512, 4 heads)
MOTION_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(depth=2, hidden=64, heads=2),
    "small": dict(depth=3, hidden=96, heads=4),  # the CPU recipe of configs/experiment/motion
    "base": dict(depth=6, hidden=384, heads=6),
    "mdm": dict(depth=8, hidden=512, heads=4),
}


def mdm(
    size: str = "small",
    in_dim: int = 263,
    num_classes: int | None = None,
    text_dim: int | None = None,
    dropout: float = 0.1,
    **overrides: Any,
) -> TransformerDenoiser:
    """An MDM-style denoiser of a named size (:data:`MOTION_SIZES`): text-conditioned when
    ``text_dim`` is set (``cond["text_pooled"]``), action-conditioned when ``num_classes`` is."""
    if size not in MOTION_SIZES:
        raise KeyError(f"unknown motion model size {size!r}; available: {sorted(MOTION_SIZES)}")
    if not isinstance(in_dim, int) or in_dim < 1:
        raise ValueError(
            f"in_dim must be a positive feature count (263 for HumanML3D), got {in_dim!r}"
        )
    kwargs = {**MOTION_SIZES[size], **overrides}
    return TransformerDenoiser(
        in_dim=in_dim,
        pos_embedding="sinusoidal",
        num_classes=num_classes,
        pooled_dim=text_dim,
        dropout=dropout,
        **kwargs,
    )
