"""Guidance as transformations of denoisers: each function takes denoisers and returns a new one.

Every result is again a ``D(x, sigma, cond) -> x0_hat`` (any rank, sigma of shape (B,)), so
guidance composes (``guidance_interval(classifier_free_guidance(D, 3.0), D, 0.3, 5.0)``) and
works with every sampler. Gradient guidance uses Tweedie's formula: adding ``s * grad_x log
p(y | x; sigma)`` to the score moves the denoiser by ``s * sigma^2 * grad_x log p(y | x; sigma)``.

- :func:`classifier_free_guidance` (Ho & Salimans 2022) with guidance rescale (Lin et al. 2023).
- :func:`autoguidance` (Karras et al. 2024) and :func:`perturbed_guidance` (Ahn et al. 2024, PAG).
- :func:`classifier_guidance` (Dhariwal & Nichol 2021), :func:`value_guidance` (Janner et al.
  2022), :func:`safety_guidance` (steer away from an "unsafe" classifier) and the generic
  :func:`gradient_guidance` they share.
- :func:`reconstruction_guidance`: diffusion posterior sampling (DPS, Chung et al. 2023).
- :func:`guidance_interval` (Kynkaanniemi et al. 2024) and :func:`dynamic_thresholding`
  (Saharia et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from polydiff.core.utils import Cond, Denoiser, append_dims

__all__ = [
    "ClassifierFreeGuidance",
    "classifier_free_guidance",
    "autoguidance",
    "perturbed_guidance",
    "gradient_guidance",
    "classifier_guidance",
    "value_guidance",
    "safety_guidance",
    "reconstruction_guidance",
    "guidance_interval",
    "dynamic_thresholding",
    "rescale_guidance",
]

# log_prob(x, sigma, cond) -> (B,): log p(y | x; sigma) or a value / reward to maximise
LogProb = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def _per_sample_std(x: torch.Tensor) -> torch.Tensor:
    """Std over every non-batch dim, shape (B, 1, ..., 1)."""
    flat = x.reshape(x.shape[0], -1)
    return append_dims(flat.std(dim=1), x.ndim)


def rescale_guidance(
    guided: torch.Tensor, conditional: torch.Tensor, rescale: float
) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, eq. 15-16) applied to x0 predictions.

    ``x_rescaled = guided * std(conditional) / std(guided)`` (std over non-batch dims), blended as
    ``rescale * x_rescaled + (1 - rescale) * guided``.
    """
    if rescale == 0.0:
        return guided
    ratio = _per_sample_std(conditional) / _per_sample_std(guided).clamp_min(1e-12)
    return rescale * guided * ratio + (1 - rescale) * guided


# ------------------------------------------------------------------------- classifier-free


def _null_batch(cond: Mapping[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
    """Duplicate every batch-first tensor of ``cond``; the second half gets null_mask True."""
    doubled: dict[str, torch.Tensor] = {}
    for key, value in cond.items():
        if key == "null_mask":
            continue
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != batch:
            raise ValueError(
                f"classifier_free_guidance: cond[{key!r}] must be a tensor with batch size "
                f"{batch} first, got {getattr(value, 'shape', type(value))}"
            )
        doubled[key] = torch.cat([value, value])
    device = next(iter(doubled.values())).device if doubled else None
    first = cond.get("null_mask")
    if first is None:
        first = torch.zeros(batch, dtype=torch.bool, device=device)
    elif first.shape != (batch,):
        raise ValueError(f"cond['null_mask'] must have shape ({batch},), got {tuple(first.shape)}")
    doubled["null_mask"] = torch.cat([first.bool(), torch.ones_like(first, dtype=torch.bool)])
    return doubled


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """``D_u + scale * (D_c - D_u)`` (Ho & Salimans 2022), optionally rescaled (Lin et al. 2023).

    ``D_u`` is the denoiser with the null condition: one batched call with ``cond["null_mask"]``
    True for the second half when ``denoiser.accepts_null_mask``, else a second call with
    ``negative_cond`` (default: ``cond`` with every row nulled for a null-mask denoiser, ``None``
    otherwise). ``batched=False`` forces two calls.
    """

    denoiser: Denoiser
    scale: float
    rescale: float = 0.0
    negative_cond: Cond = None
    batched: bool | None = None

    def _accepts(self) -> bool:
        return bool(getattr(self.denoiser, "accepts_null_mask", False))

    def _use_batch(self) -> bool:
        if self.negative_cond is not None:
            return False
        accepts = self._accepts()
        if self.batched and not accepts:
            raise ValueError("batched CFG needs a denoiser with accepts_null_mask = True")
        return accepts if self.batched is None else self.batched

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        if cond is None and self.negative_cond is None:
            return self.denoiser(x, sigma, None)
        if self.scale == 1.0 and self.rescale == 0.0:
            return self.denoiser(x, sigma, cond)
        b = x.shape[0]
        if cond is not None and self._use_batch():
            both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), _null_batch(cond, b))
            conditional, unconditional = both[:b], both[b:]
        else:
            conditional = self.denoiser(x, sigma, cond)
            negative = self.negative_cond
            if negative is None and cond is not None and self._accepts():
                # a null-mask network may require its condition keys: null every row instead
                negative = {**cond, "null_mask": torch.ones(b, dtype=torch.bool, device=x.device)}
            unconditional = self.denoiser(x, sigma, negative)
        guided = unconditional + self.scale * (conditional - unconditional)
        return rescale_guidance(guided, conditional, self.rescale)


def classifier_free_guidance(
    denoiser: Denoiser,
    scale: float,
    *,
    rescale: float = 0.0,
    negative_cond: Cond = None,
    batched: bool | None = None,
) -> ClassifierFreeGuidance:
    """Classifier-free guidance of ``denoiser`` (scale 1 = the plain conditional denoiser).

    Batches cond and null in one call when the denoiser has ``accepts_null_mask = True`` (every
    tensor of ``cond`` must be batch-first), else calls it twice (with ``negative_cond``, default
    None). ``rescale`` in [0, 1] is the guidance rescale of Lin et al. 2023 computed on x0.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale must be in [0, 1], got {rescale}")
    return ClassifierFreeGuidance(denoiser, float(scale), float(rescale), negative_cond, batched)


# ------------------------------------------------------------------------- weak / perturbed


@dataclass(frozen=True)
class _Contrast:
    """``negative + scale * (positive - negative)`` with both evaluated on the same cond."""

    positive: Denoiser
    negative: Denoiser
    scale: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        if self.scale == 1.0:
            return self.positive(x, sigma, cond)
        good = self.positive(x, sigma, cond)
        bad = self.negative(x, sigma, cond)
        return bad + self.scale * (good - bad)


def autoguidance(denoiser: Denoiser, weak_denoiser: Denoiser, scale: float) -> Denoiser:
    """Autoguidance (Karras et al. 2024, eq. 2): ``D_weak + scale * (D - D_weak)``.

    ``weak_denoiser`` is a smaller / less trained version of the same model, same conditioning.
    """
    return _Contrast(denoiser, weak_denoiser, float(scale))


def perturbed_guidance(denoiser: Denoiser, perturbed_denoiser: Denoiser, scale: float) -> Denoiser:
    """Perturbed-attention style guidance (Ahn et al. 2024): ``D + scale * (D - D_perturbed)``.

    ``perturbed_denoiser`` is the same model with a degraded internal path (identity attention
    maps, dropped blocks...); scale 0 is the plain denoiser.
    """
    return _Contrast(denoiser, perturbed_denoiser, 1.0 + float(scale))


# ------------------------------------------------------------------------- gradient guidance


@dataclass(frozen=True)
class _GradientGuidance:
    denoiser: Denoiser
    objective: LogProb
    scale: float
    through: str
    sigma_min: float
    sigma_max: float
    gate: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        active = (sigma >= self.sigma_min) & (sigma <= self.sigma_max) & (sigma > 0)
        if self.scale == 0.0 or not bool(active.any()):
            return self.denoiser(x, sigma, cond)
        if self.through == "x":
            denoised = self.denoiser(x, sigma, cond)  # in the caller's grad mode
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            if self.through == "x":
                objective = self.objective(xg, sigma, cond)  # (B,)
            else:  # through the denoiser's x0 estimate
                denoised_g = self.denoiser(xg, sigma, cond)
                denoised = denoised_g.detach()
                objective = self.objective(denoised_g, torch.zeros_like(sigma), cond)
            if objective.shape != (x.shape[0],):
                raise ValueError(
                    f"guidance objective must return shape ({x.shape[0]},), "
                    f"got {tuple(objective.shape)}"
                )
            (grad,) = torch.autograd.grad(objective.sum(), xg)
        weight = self.scale * sigma.to(grad.dtype) ** 2 * active.to(grad.dtype)  # (B,)
        if self.gate is not None:
            weight = weight * self.gate(objective.detach()).to(grad.dtype)
        return denoised + append_dims(weight, x.ndim) * grad.to(denoised.dtype)


def gradient_guidance(
    denoiser: Denoiser,
    objective: LogProb,
    scale: float,
    *,
    through: str = "x",
    sigma_min: float = 0.0,
    sigma_max: float = math.inf,
) -> Denoiser:
    """``D + scale * sigma^2 * grad_x objective`` (Tweedie; Song et al. 2021 conditional score).

    ``objective(x, sigma, cond) -> (B,)`` is differentiated at the noisy ``x`` (``through="x"``)
    or at the denoised estimate, back through the denoiser (``through="denoised"``, called with
    sigma 0). Guidance is applied only for ``sigma_min <= sigma <= sigma_max`` (stop-grad below).
    """
    if through not in ("x", "denoised"):
        raise ValueError(f"through must be 'x' or 'denoised', got {through!r}")
    return _GradientGuidance(denoiser, objective, float(scale), through, sigma_min, sigma_max)


def classifier_guidance(denoiser: Denoiser, log_prob: LogProb, scale: float) -> Denoiser:
    """Classifier guidance (Dhariwal & Nichol 2021): ``D + scale * sigma^2 * grad_x log p(y|x)``.

    ``log_prob(x, sigma, cond) -> (B,)`` is a noise-aware classifier's log p(y | x; sigma) for the
    wanted labels (taken from ``cond`` by the caller's function). With the exact p(y | x; sigma),
    scale 1 gives exactly the class-conditional denoiser (Bayes' rule + Tweedie).
    """
    return gradient_guidance(denoiser, log_prob, scale)


def value_guidance(
    denoiser: Denoiser,
    value: LogProb,
    scale: float,
    *,
    through: str = "x",
    sigma_min: float = 0.0,
    sigma_max: float = math.inf,
) -> Denoiser:
    """Value guidance for planning (Janner et al. 2022, Diffuser sec. 3.2): maximise a value.

    ``value(x, sigma, cond) -> (B,)`` is a learned (noise-aware) return estimate, differentiated
    at the noisy plan (``through="x"``) or at the denoised plan (``through="denoised"``);
    ``sigma_min`` switches the gradient off at the last, low-noise steps (Diffuser's t_stopgrad).
    """
    return gradient_guidance(
        denoiser, value, scale, through=through, sigma_min=sigma_min, sigma_max=sigma_max
    )


def safety_guidance(
    denoiser: Denoiser,
    unsafe_logit: LogProb,
    scale: float,
    *,
    threshold: float | None = None,
) -> Denoiser:
    """Steer samples away from an "unsafe" set: classifier guidance towards "safe".

    ``unsafe_logit(x, sigma, cond) -> (B,)`` is a noise-aware binary classifier's log-odds
    ``log p(unsafe | x; sigma) - log p(safe | x; sigma)``; guidance follows
    ``grad_x log p(safe | x) = -grad_x softplus(logit)`` (log-odds keep it exact even where
    p(unsafe) rounds to 1). At scale 1 with the exact classifier this is the exact denoiser of the
    data restricted to the safe set. With ``threshold``, only rows whose p(unsafe) exceeds it are
    steered (safe completions: leave already-safe samples untouched).
    """

    def safe_log_prob(x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        return -torch.nn.functional.softplus(unsafe_logit(x, sigma, cond))

    gate = None
    if threshold is not None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        log_safe_max = math.log1p(-threshold)

        def gate(log_safe: torch.Tensor) -> torch.Tensor:  # steer only if p(unsafe) > t
            return (log_safe < log_safe_max).to(log_safe.dtype)

    return _GradientGuidance(denoiser, safe_log_prob, float(scale), "x", 0.0, math.inf, gate=gate)


def reconstruction_guidance(
    denoiser: Denoiser,
    operator: Callable[[torch.Tensor], torch.Tensor],
    measurement: torch.Tensor,
    scale: float,
    *,
    normalize: bool = False,
    sigma_min: float = 0.0,
) -> Denoiser:
    """Diffusion posterior sampling (Chung et al. 2023): guidance by a measurement loss through D.

    Gradient of ``-||y - A(D(x))||^2 / 2`` back through the denoiser (the Gaussian likelihood of
    DPS, Theorem 1 / eq. 16; ``scale`` = 1 / measurement variance). ``normalize=True`` uses DPS's
    step ``-grad ||y - A(D(x))||`` (the norm, not its square; Algorithm 1). ``operator`` maps
    x0 (B, ...) to measurements of the shape of ``measurement`` (B, ...).
    """

    def log_likelihood(x0: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        residual = (measurement - operator(x0)).reshape(x0.shape[0], -1)
        sq = residual.square().sum(1)
        return -(sq + 1e-20).sqrt() if normalize else -0.5 * sq

    return gradient_guidance(
        denoiser, log_likelihood, scale, through="denoised", sigma_min=sigma_min
    )


# ------------------------------------------------------------------------- interval / threshold


@dataclass(frozen=True)
class _Interval:
    guided: Denoiser
    base: Denoiser
    sigma_lo: float
    sigma_hi: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        inside = (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)  # (B,)
        if bool(inside.all()):
            return self.guided(x, sigma, cond)
        if not bool(inside.any()):
            return self.base(x, sigma, cond)
        mask = append_dims(inside, x.ndim)
        return torch.where(mask, self.guided(x, sigma, cond), self.base(x, sigma, cond))


def guidance_interval(
    guided: Denoiser, base: Denoiser, sigma_lo: float, sigma_hi: float = math.inf
) -> Denoiser:
    """Use ``guided`` only for ``sigma_lo < sigma <= sigma_hi`` and ``base`` elsewhere.

    Kynkaanniemi et al. 2024 ("Applying guidance in a limited interval"): guidance at high noise
    costs diversity, at low noise it does little; rows are chosen per sample.
    """
    if sigma_lo > sigma_hi:
        raise ValueError(f"sigma_lo ({sigma_lo}) must not exceed sigma_hi ({sigma_hi})")
    return _Interval(guided, base, float(sigma_lo), float(sigma_hi))


@dataclass(frozen=True)
class _DynamicThreshold:
    denoiser: Denoiser
    percentile: float
    floor: float
    max_value: float | None

    @property
    def accepts_null_mask(self) -> bool:
        return bool(getattr(self.denoiser, "accepts_null_mask", False))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        x0 = self.denoiser(x, sigma, cond)
        flat = x0.reshape(x0.shape[0], -1).abs()
        s = torch.quantile(flat.float(), self.percentile, dim=1).to(x0.dtype)  # (B,)
        s = s.clamp_min(self.floor)
        if self.max_value is not None:
            s = s.clamp_max(self.max_value)
        s = append_dims(s, x0.ndim)
        return x0.clamp(-s, s) / s * self.floor


def dynamic_thresholding(
    denoiser: Denoiser,
    percentile: float = 0.995,
    *,
    threshold: float = 1.0,
    max_value: float | None = None,
) -> Denoiser:
    """Dynamic thresholding of x0 (Saharia et al. 2022, Imagen sec. 2.3).

    Per sample, ``s = max(quantile(|x0|, percentile), threshold)`` (optionally capped at
    ``max_value``); x0 is clipped to [-s, s] and rescaled to [-threshold, threshold]
    (``threshold`` is the data range, 1 for data in [-1, 1]).
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    return _DynamicThreshold(denoiser, float(percentile), float(threshold), max_value)
