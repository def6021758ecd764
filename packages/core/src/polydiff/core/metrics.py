"""Generic sample-quality metrics on feature vectors (torch only, any modality).

Every function takes features of shape (N, ...) (flattened to (N, F) here), so the same code
scores Inception features of images, point-cloud embeddings, motion features or raw 2-D points.

- :func:`frechet_distance` / :func:`frechet_distance_from_features`: FID's formula
  (Heusel et al. 2017), the matrix square root through symmetric eigendecompositions (no scipy).
- :func:`mmd` / :func:`kernel_inception_distance`: unbiased squared MMD with the cubic polynomial
  kernel of KID (Binkowski et al. 2018), or a Gaussian kernel.
- :func:`precision_recall`: k-NN manifold precision and recall (Kynkaanniemi et al. 2019).
- :func:`density_coverage`: density and coverage (Naeem et al. 2020).
- :func:`one_nn_accuracy`: leave-one-out 1-NN two-sample test accuracy (Lopez-Paz & Oquab 2017;
  0.5 is ideal), as used for point clouds (Yang et al. 2019).
- :func:`sliced_wasserstein`: sliced Wasserstein distance over random projections.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "density_coverage",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "kernel_inception_distance",
    "mmd",
    "one_nn_accuracy",
    "precision_recall",
    "sliced_wasserstein",
]

_CHUNK = 4096  # rows per block of pairwise distances (bounds memory at ~_CHUNK * N floats)


def _features(x: torch.Tensor, name: str = "features") -> torch.Tensor:
    """(N, ...) -> (N, F) float64, with a named error for bad input."""
    x = torch.as_tensor(x)
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 2, got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.double()
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain non-finite values")
    return x


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets have different dimensions: {a.shape[1]} vs {b.shape[1]}")


# ------------------------------------------------------------------------------- Frechet


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, ...), in float64."""
    x = _features(features)
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> torch.Tensor:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (the FID formula).

    ``||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)``; the trace of the square root is
    the sum of square roots of the eigenvalues of the symmetric ``C1^1/2 C2 C1^1/2``.
    Returns a float64 scalar tensor.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    cov1, cov2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    f = mu1.shape[0]
    if mu2.shape != (f,) or cov1.shape != (f, f) or cov2.shape != (f, f):
        raise ValueError(
            f"frechet_distance: got means {tuple(mu1.shape)}, {tuple(mu2.shape)} and covariances "
            f"{tuple(cov1.shape)}, {tuple(cov2.shape)}; expected (F,) and (F, F)"
        )
    root1 = _sqrtm_psd(cov1)
    middle = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    return diff @ diff + torch.trace(cov1) + torch.trace(cov2) - 2 * trace_sqrt


def frechet_distance_from_features(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Frechet distance between Gaussian fits of two feature sets (N, ...) and (M, ...)."""
    mu1, cov1 = feature_statistics(real)
    mu2, cov2 = feature_statistics(fake)
    return frechet_distance(mu1, cov1, mu2, cov2)


# ------------------------------------------------------------------------------- MMD / KID


def _kernel(a: torch.Tensor, b: torch.Tensor, kernel: str, bandwidth: float | None) -> torch.Tensor:
    if kernel == "polynomial":  # KID: (a.b / F + 1)^3
        return (a @ b.T / a.shape[1] + 1) ** 3
    if kernel == "rbf":
        bw = bandwidth if bandwidth is not None else math.sqrt(a.shape[1])
        return torch.exp(-torch.cdist(a, b).square() / (2 * bw**2))
    raise ValueError(f"unknown kernel {kernel!r}; choose 'polynomial' or 'rbf'")


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "polynomial",
    bandwidth: float | None = None,
) -> torch.Tensor:
    """Unbiased estimate of the squared maximum mean discrepancy (Gretton et al. 2012, eq. 3).

    ``kernel="polynomial"`` is KID's ``(x.y / F + 1)^3``; ``"rbf"`` is a Gaussian kernel of
    ``bandwidth`` (default sqrt(F)). Can be slightly negative when the sets match.
    """
    a, b = _features(x, "x"), _features(y, "y")
    _check_pair(a, b)
    m, n = a.shape[0], b.shape[0]
    kxx, kyy, kxy = (_kernel(p, q, kernel, bandwidth) for p, q in ((a, a), (b, b), (a, b)))
    sum_xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    sum_yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return sum_xx + sum_yy - 2 * kxy.mean()


def kernel_inception_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KID (Binkowski et al. 2018): mean and std of the unbiased polynomial MMD^2 over subsets."""
    a, b = _features(real, "real"), _features(fake, "fake")
    _check_pair(a, b)
    size = min(subset_size, a.shape[0], b.shape[0])
    values = []
    for _ in range(num_subsets):
        ia = torch.randperm(a.shape[0], generator=generator)[:size]
        ib = torch.randperm(b.shape[0], generator=generator)[:size]
        values.append(mmd(a[ia], b[ib], kernel="polynomial"))
    v = torch.stack(values)
    return v.mean(), (v.std() if num_subsets > 1 else torch.zeros((), dtype=v.dtype))


# ------------------------------------------------------------------------------- k-NN metrics


def _kth_nn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of x (N, F) to its k-th nearest other row, (N,)."""
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, {x.shape[0] - 1}] for {x.shape[0]} samples, got {k}")
    out = []
    for start in range(0, x.shape[0], _CHUNK):
        d = torch.cdist(x[start : start + _CHUNK], x)  # (c, N)
        out.append(d.kthvalue(k + 1, dim=1).values)  # k + 1: the row itself is at distance 0
    return torch.cat(out)


def _ball_counts(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each query, the number of balls B(centre_i, radius_i) that contain it, (Q,)."""
    out = []
    for start in range(0, queries.shape[0], _CHUNK):
        d = torch.cdist(queries[start : start + _CHUNK], centres)  # (c, N)
        out.append((d <= radii[None]).sum(1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    The manifold of a set is the union of balls around each sample reaching its k-th nearest
    neighbour. Precision: fraction of fake samples inside the real manifold; recall: fraction of
    real samples inside the fake manifold.
    """
    a, b = _features(real, "real"), _features(fake, "fake")
    _check_pair(a, b)
    precision = (_ball_counts(b, a, _kth_nn_radius(a, k)) > 0).double().mean()
    recall = (_ball_counts(a, b, _kth_nn_radius(b, k)) > 0).double().mean()
    return {"precision": precision.item(), "recall": recall.item()}


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) with k-NN balls around the real samples.

    density = (1 / kM) sum_j #{i : fake_j in B(real_i, r_i)} (1 on average when the sets match);
    coverage = fraction of real balls that contain at least one fake sample.
    """
    a, b = _features(real, "real"), _features(fake, "fake")
    _check_pair(a, b)
    radii = _kth_nn_radius(a, k)
    density = _ball_counts(b, a, radii).double().sum() / (k * b.shape[0])
    covered = []
    for start in range(0, a.shape[0], _CHUNK):
        d = torch.cdist(a[start : start + _CHUNK], b)  # (c, M)
        covered.append(d.min(1).values <= radii[start : start + _CHUNK])
    coverage = torch.cat(covered).double().mean()
    return {"density": density.item(), "coverage": coverage.item()}


def one_nn_accuracy(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of telling real from fake (0.5 is ideal)."""
    a, b = _features(real, "real"), _features(fake, "fake")
    _check_pair(a, b)
    both = torch.cat([a, b])
    labels = torch.cat([torch.zeros(a.shape[0]), torch.ones(b.shape[0])]).bool()
    correct = 0
    for start in range(0, both.shape[0], _CHUNK):
        d = torch.cdist(both[start : start + _CHUNK], both)  # (c, N + M)
        idx = torch.arange(start, start + d.shape[0])
        d[torch.arange(d.shape[0]), idx] = math.inf  # leave one out
        nearest = d.argmin(1)
        correct += int((labels[nearest] == labels[idx]).sum())
    return correct / both.shape[0]


# ------------------------------------------------------------------------------- Wasserstein


def _quantiles(sorted_proj: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Linear-interpolated quantiles of each column of ``sorted_proj`` (N, P) at ``levels`` (Q,)."""
    n = sorted_proj.shape[0]
    pos = levels * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo)[:, None]
    return sorted_proj[lo] * (1 - frac) + sorted_proj[hi] * frac


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    num_projections: int = 256,
    p: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sliced p-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015).

    ``(E_theta W_p^p(theta.x, theta.y))^(1/p)`` over ``num_projections`` random unit directions;
    1-D distances by sorting (sets of different sizes are compared through their quantiles).
    """
    a, b = _features(x, "x"), _features(y, "y")
    _check_pair(a, b)
    theta = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    # sort each projection along a contiguous last dim: (P, N), (P, M)
    pa = (theta.T @ a.T).sort(1).values
    pb = (theta.T @ b.T).sort(1).values
    if pa.shape[1] != pb.shape[1]:
        n = max(pa.shape[1], pb.shape[1])
        levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        pa, pb = _quantiles(pa.T, levels), _quantiles(pb.T, levels)
    return ((pa - pb).abs() ** p).mean().pow(1.0 / p)
