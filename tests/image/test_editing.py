"""Image editing wrappers, checked on an exact denoiser: a Gaussian mixture over 8x8 images.

Each component is an image "class" whose left and right halves have their own pattern, so a
filled-in right half can be judged against the known left half by the exact posterior
``p(k | x)`` (the perfect feature classifier of this toy image distribution).
"""

from __future__ import annotations

import pytest
import torch

from polydiff.core.schedules import karras_sigmas
from polydiff.core.toy import GaussianMixture
from polydiff.image.editing import (
    box_mask,
    img2img,
    inpaint,
    inversion_edit,
    invert,
    outpaint,
    outpaint_canvas,
    regenerate,
)

K, S = 4, 8


@pytest.fixture(scope="module")
def gmm() -> GaussianMixture:
    g = torch.Generator().manual_seed(3)
    means = (torch.rand(K, 1, S, S, generator=g) * 2 - 1).sign() * 0.7  # (K, 1, 8, 8)
    return GaussianMixture(means.reshape(K, -1), 0.15)


def _images(gmm: GaussianMixture, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = gmm.sample(n, generator=torch.Generator().manual_seed(seed), return_labels=True)
    return x.reshape(n, 1, S, S), y


def _classify(gmm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    return gmm.class_log_prob(x).argmax(-1)


SIGMAS = karras_sigmas(20, 0.01, 20.0)
LEFT_KNOWN = box_mask(S, 0, S // 2, S, S // 2)  # right half unknown


def test_box_mask_and_canvas() -> None:
    m = box_mask(8, 2, 3, 4, 2)
    assert m.shape == (1, 1, 8, 8) and m.dtype == torch.bool
    assert int((~m).sum()) == 8 and not m[0, 0, 2, 3] and m[0, 0, 1, 3]
    assert torch.equal(box_mask(8, 2, 3, 4, 2, known_inside=True), ~m)
    with pytest.raises(ValueError, match="does not fit"):
        box_mask(8, 6, 0, 4, 2)
    img = torch.rand(2, 3, 4, 4)
    canvas, known = outpaint_canvas(img, (1, 2, 3, 0))
    assert canvas.shape == (2, 3, 7, 7) and known.shape == (2, 1, 7, 7)
    assert torch.equal(canvas[..., 1:5, 3:7], img) and int(known.sum()) == 2 * 16


@pytest.mark.parametrize("method", ["replacement", "repaint"])
def test_inpaint_keeps_known_pixels_and_fills_consistently(gmm, method) -> None:
    images, labels = _images(gmm, 64)
    out = inpaint(
        gmm, images, LEFT_KNOWN, SIGMAS, method=method, jump_length=5, resample=2,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    known = LEFT_KNOWN.expand_as(images)
    assert torch.equal(out[known], images[known])  # exactly, not approximately
    consistent = (_classify(gmm, out) == labels).float().mean().item()
    # unguided samples agree with the known half's class only by chance (~1/K)
    free, _ = _images(gmm, 64, seed=5)
    chance = (_classify(gmm, free) == labels).float().mean().item()
    assert consistent >= 0.95 and chance <= 0.45, (consistent, chance)
    # the filled half is near the class template (std 0.15 per pixel around +-0.7)
    means = gmm.means.reshape(K, 1, S, S).to(out.dtype)[labels]
    assert (out - means)[~known].abs().mean() < 0.25


def test_outpaint_extends_a_crop(gmm) -> None:
    images, labels = _images(gmm, 64, seed=2)
    crop = images[..., 2:6, 2:6]  # a quarter of the pixels is known
    out = outpaint(
        gmm, crop, 2, SIGMAS, method="repaint", jump_length=2, resample=5,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.shape == images.shape
    assert torch.equal(out[..., 2:6, 2:6], crop)
    # 3/4 unknown: harder than the half-image case, but well above chance (1/K)
    assert (_classify(gmm, out) == labels).float().mean() >= 0.6


def test_img2img_strength(gmm) -> None:
    images, labels = _images(gmm, 64, seed=3)
    target = (labels + 1) % K
    cond = {"class": target}
    low = img2img(gmm, images, SIGMAS, 0.3, generator=torch.Generator().manual_seed(0))
    high = img2img(gmm, images, SIGMAS, 1.0, cond=cond, generator=torch.Generator().manual_seed(0))
    # small strength keeps the image (and its class), full strength follows the condition
    assert (_classify(gmm, low) == labels).float().mean() >= 0.95
    assert (low - images).abs().mean() < 0.15
    assert (_classify(gmm, high) == target).float().mean() >= 0.95
    # a named sampler runs through polydiff.core.samplers
    ode = img2img(gmm, images, SIGMAS, 0.3, sampler="heun", generator=torch.Generator())
    assert (_classify(gmm, ode) == labels).float().mean() >= 0.95
    with pytest.raises(ValueError, match="unknown sampler"):
        img2img(gmm, images, SIGMAS, 0.5, sampler="nope")
    with pytest.raises(ValueError, match="strength"):
        img2img(gmm, images, SIGMAS, 1.5)


def test_ddpm_inversion_reconstructs_and_edits(gmm) -> None:
    images, labels = _images(gmm, 32, seed=4)
    target = (labels + 2) % K
    inv = invert(
        gmm, images, SIGMAS, cond={"class": labels}, generator=torch.Generator().manual_seed(0)
    )
    assert inv.noise_maps.shape == (20, 32, 1, S, S)
    back = regenerate(gmm, inv, cond={"class": labels})
    assert (back - images).abs().max() < 1e-4
    edited = regenerate(gmm, inv, cond={"class": target})
    assert (_classify(gmm, edited) == target).float().mean() >= 0.95
    again = inversion_edit(
        gmm, images, SIGMAS, {"class": labels}, {"class": target},
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.allclose(again, edited)


def test_ode_inversion_reconstructs(gmm) -> None:
    images, labels = _images(gmm, 16, seed=6)
    cond = {"class": labels}
    sigmas = karras_sigmas(30, 0.01, 20.0)
    inv = invert(gmm, images, sigmas, cond=cond, method="ddim", fixed_point_iterations=8)
    back = regenerate(gmm, inv, cond=cond)
    assert (back - images).abs().max() < 2e-2
    edited = regenerate(gmm, inv, cond={"class": (labels + 1) % K})
    assert (_classify(gmm, edited) == (labels + 1) % K).float().mean() >= 0.9


def test_bad_inputs(gmm) -> None:
    images, _ = _images(gmm, 2)
    with pytest.raises(ValueError, match="unknown inpainting method"):
        inpaint(gmm, images, LEFT_KNOWN, SIGMAS, method="magic")
    with pytest.raises(ValueError, match="does not broadcast"):
        inpaint(gmm, images, torch.ones(5, 5, dtype=torch.bool), SIGMAS)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        inpaint(gmm, images[0], LEFT_KNOWN, SIGMAS)
    with pytest.raises(ValueError, match="unknown inversion method"):
        invert(gmm, images, SIGMAS, method="dpm")
