"""Shared helpers of the core: the denoiser protocol and rank-agnostic broadcasting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

Cond = Mapping[str, torch.Tensor] | None


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma, cond) -> x0_hat`` with ``x = x0 + sigma * eps`` and ``sigma`` of shape (B,)."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor: ...


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so that ``t`` broadcasts against a rank-``ndim`` tensor."""
    missing = ndim - t.ndim
    if missing < 0:
        raise ValueError(f"append_dims: tensor has {t.ndim} dims, more than the target {ndim}")
    return t[(...,) + (None,) * missing]


def batch_sigma(
    sigma: torch.Tensor | float, x: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``sigma`` as the (B,) tensor a denoiser takes for the batch ``x``: the one copy.

    A float or 0-d tensor is broadcast over the batch; a (B,) tensor is checked (ValueError naming
    both shapes otherwise). Result on ``x``'s device in ``dtype`` (default: a tensor keeps its
    dtype, a float becomes ``x``'s float dtype, at least float32).
    """
    if dtype is None and not isinstance(sigma, torch.Tensor):
        dtype = torch.promote_types(x.dtype, torch.float32)
    s = torch.as_tensor(sigma, device=x.device, dtype=dtype)
    if s.ndim == 0:
        return s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must have shape (B,) = ({x.shape[0]},) for x of shape {tuple(x.shape)}, "
            f"got {tuple(s.shape)}"
        )
    return s


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Append a final 0 to a 1-D sigma grid."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / append_dims(sigma, x.ndim)
