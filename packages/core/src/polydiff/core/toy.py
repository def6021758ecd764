"""Ground truth for the math: Gaussian mixtures with closed-form denoisers, and 2-D toy sets.

For ``p(x0) = sum_k w_k N(mu_k, diag(s_k^2))`` and ``x = x0 + sigma * eps`` every quantity a
sampler or a guidance method needs is exact:

- noisy density   ``p(x; sigma) = sum_k w_k N(x; mu_k, diag(s_k^2 + sigma^2))``
- responsibilities ``r_k(x) = p(k | x; sigma)`` (a softmax of the component log-densities)
- denoiser        ``E[x0 | x] = sum_k r_k (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))``
- score           ``grad_x log p(x; sigma) = (E[x0 | x] - x) / sigma^2`` (Tweedie)

All internal arithmetic runs in float64; outputs take the dtype of the input ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from polydiff.core.utils import append_dims

__all__ = [
    "GaussianMixture",
    "checkerboard",
    "ring_mixture",
    "ring_of_gaussians",
    "swiss_roll",
    "two_moons",
]


def _as_sigma(sigma: torch.Tensor | float, batch: int) -> torch.Tensor:
    """Return sigma as a float64 tensor of shape (B,)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if s.ndim == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},), got {tuple(s.shape)}")
    if (s < 0).any():
        raise ValueError("sigma must be non-negative")
    return s


class GaussianMixture:
    """Mixture of diagonal Gaussians with exact noisy density, score and denoiser.

    Args:
        means: (K, D) component means.
        stds: (K,) isotropic or (K, D) diagonal component standard deviations (> 0).
        weights: (K,) mixture weights (normalised here); uniform if None.

    The object is itself a denoiser ``D(x, sigma, cond)``: with ``cond={"class": y}`` it is the
    exact class-conditional denoiser of component ``y`` (rows with ``cond["null_mask"]`` True
    fall back to the unconditional one), so it also serves as ground truth for guidance.
    """

    accepts_null_mask = True

    def __init__(
        self,
        means: torch.Tensor,
        stds: torch.Tensor | float,
        weights: torch.Tensor | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 0:
            stds = stds.expand(k)
        if stds.ndim == 1:
            if stds.shape[0] != k:
                raise ValueError(f"stds must have shape ({k},) or ({k}, {d}), got {stds.shape}")
            stds = stds[:, None].expand(k, d)
        if stds.shape != (k, d):
            raise ValueError(f"stds must have shape ({k},) or ({k}, {d}), got {tuple(stds.shape)}")
        if (stds <= 0).any():
            raise ValueError("stds must be positive")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        self.means = means.contiguous()  # (K, D)
        self.stds = stds.contiguous()  # (K, D)
        self.weights = weights / weights.sum()  # (K,)

    # ------------------------------------------------------------------ basics
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """Mean of the clean mixture, (D,)."""
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self, sigma: float = 0.0) -> torch.Tensor:
        """Covariance of the mixture noised at ``sigma``, (D, D) (law of total covariance)."""
        mu = self.mean()
        centred = self.means - mu  # (K, D)
        between = torch.einsum("k,ki,kj->ij", self.weights, centred, centred)
        within = torch.diag((self.weights[:, None] * (self.stds**2 + sigma**2)).sum(0))
        return between + within

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim and x[0].numel() != self.dim:
            raise ValueError(
                f"x must have {self.dim} features per sample, got shape {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    def _component_log_probs(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; mu_k, s_k^2 + sigma^2) for every component, (B, K)."""
        var = self.stds[None] ** 2 + sigma[:, None, None] ** 2  # (B, K, D)
        diff = x[:, None, :] - self.means[None]  # (B, K, D)
        log_n = -0.5 * ((diff**2 / var) + var.log() + math.log(2 * math.pi)).sum(-1)
        return self.weights.log()[None] + log_n

    # ------------------------------------------------------------- densities
    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Exact log-density of ``x`` under the mixture noised at ``sigma``, shape (B,)."""
        xf = self._flat(x)
        s = _as_sigma(sigma, xf.shape[0])
        return torch.logsumexp(self._component_log_probs(xf, s), dim=-1).to(x.dtype)

    def class_log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Exact ``log p(k | x; sigma)`` (log responsibilities), shape (B, K)."""
        xf = self._flat(x)
        s = _as_sigma(sigma, xf.shape[0])
        return torch.log_softmax(self._component_log_probs(xf, s), dim=-1).to(x.dtype)

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Exact score ``grad_x log p(x; sigma)`` (same shape as x)."""
        xf = self._flat(x)
        s = _as_sigma(sigma, xf.shape[0])
        return self._score(xf, s, None).reshape(x.shape).to(x.dtype)

    def _score(self, x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        var = self.stds[None] ** 2 + s[:, None, None] ** 2  # (B, K, D)
        diff = x[:, None, :] - self.means[None]  # (B, K, D)
        logits = self._component_log_probs(x, s)  # (B, K)
        if labels is not None:
            logits = torch.where(
                torch.nn.functional.one_hot(labels, self.num_components).bool(),
                logits,
                torch.full_like(logits, -math.inf),
            )
        r = torch.softmax(logits, dim=-1)  # (B, K)
        return -(r[..., None] * diff / var).sum(1)  # (B, D)

    # -------------------------------------------------------------- denoiser
    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exact ``E[x0 | x; sigma]`` (or ``E[x0 | x, k=labels; sigma]`` per row)."""
        xf = self._flat(x)
        s = _as_sigma(sigma, xf.shape[0])
        var = self.stds[None] ** 2 + s[:, None, None] ** 2  # (B, K, D)
        diff = x.reshape(xf.shape).to(torch.float64)[:, None, :] - self.means[None]
        logits = self._component_log_probs(xf, s)  # (B, K)
        if labels is not None:
            labels = torch.as_tensor(labels, device=logits.device).long()
            if labels.shape != (xf.shape[0],):
                raise ValueError(f"labels must have shape ({xf.shape[0]},)")
            keep = torch.nn.functional.one_hot(labels, self.num_components).bool()
            logits = torch.where(keep, logits, torch.full_like(logits, -math.inf))
        r = torch.softmax(logits, dim=-1)  # (B, K)
        post = self.means[None] + self.stds[None] ** 2 / var * diff  # (B, K, D)
        return (r[..., None] * post).sum(1).reshape(x.shape).to(x.dtype)

    def denoiser(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The mixture as a denoiser ``D(x, sigma, cond)``; ``cond["class"]`` picks a component."""
        if cond is None or "class" not in cond:
            return self.denoise(x, sigma)
        labels = torch.as_tensor(cond["class"]).long()
        uncond = self.denoise(x, sigma)
        conditional = self.denoise(x, sigma, labels)
        if "null_mask" in cond:
            mask = append_dims(torch.as_tensor(cond["null_mask"]).bool(), x.ndim)
            return torch.where(mask, uncond, conditional)
        return conditional

    __call__ = denoiser

    def conditional(self, k: int) -> GaussianMixture:
        """Component ``k`` alone, as a one-component mixture."""
        return GaussianMixture(self.means[k : k + 1], self.stds[k : k + 1], None)

    # --------------------------------------------------------------- sampling
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        return_labels: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` clean samples (and their component labels if asked)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (self.means[labels] + self.stds[labels] * eps).to(dtype)
        return (x, labels) if return_labels else x


# ---------------------------------------------------------------------------
# Built-in 2-D training sets
# ---------------------------------------------------------------------------


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """``k`` equal-weight isotropic Gaussians evenly spaced on a circle (exact ground truth)."""
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=-1)
    return GaussianMixture(means, std)


def ring_of_gaussians(
    n: int,
    k: int = 8,
    radius: float = 2.0,
    std: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n`` samples (n, 2) of :func:`ring_mixture`."""
    return ring_mixture(k, radius, std).sample(n, generator=generator)


def two_moons(
    n: int, noise: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Two interleaving half circles (as scikit-learn's make_moons), centred, (n, 2)."""
    upper = torch.rand(n, generator=generator) < 0.5
    theta = torch.rand(n, generator=generator) * math.pi
    x = torch.where(upper, theta.cos(), 1 - theta.cos())
    y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
    pts = torch.stack([x - 0.5, y - 0.25], dim=-1)
    return pts + noise * torch.randn(n, 2, generator=generator)


def swiss_roll(
    n: int, noise: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """2-D swiss roll spiral scaled to roughly [-2, 2]^2, (n, 2)."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([t * t.cos(), t * t.sin()], dim=-1) / 7.0
    return pts + noise * torch.randn(n, 2, generator=generator)


def checkerboard(
    n: int, squares: int = 4, size: float = 4.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform samples on the dark squares of a ``squares x squares`` board of side ``size``."""
    if squares % 2:
        raise ValueError("checkerboard needs an even number of squares per side")
    cell = size / squares
    i = torch.randint(0, squares, (n,), generator=generator)
    j2 = torch.randint(0, squares // 2, (n,), generator=generator)
    j = 2 * j2 + (i % 2)  # dark squares only
    u = torch.rand(n, 2, generator=generator)
    pts = torch.stack([i + u[:, 0], j + u[:, 1]], dim=-1) * cell - size / 2
    return pts
