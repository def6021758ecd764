"""MDM geometric losses on top of the core objective."""

from __future__ import annotations

import pytest
import torch

from polydiff.core.objective import DiffusionObjective
from polydiff.core.schedules import VPSchedule
from polydiff.motion.data import builtin_motions
from polydiff.motion.models import mdm
from polydiff.motion.objective import GeometricObjective


class _Oracle(torch.nn.Module):
    """x0-prediction 'network' that returns the clean data it was given."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t, cond=None):
        return self.x0 * self.scale


def _batch():
    feats = builtin_motions(2, seed=0, min_len=20, max_len=20).features
    return torch.stack([torch.as_tensor(f[:20]) for f in feats])


def test_geometric_terms_vanish_for_the_truth_and_grow_with_error():
    x0 = _batch()
    obj = GeometricObjective(DiffusionObjective(VPSchedule.cosine(), prediction="x0"))
    zero = obj.geometric_terms(x0, x0, None)
    assert zero[:, :2].abs().max() < 1e-10
    assert zero[:, 2].max() < 1e-4  # contact frames move < 4.5 cm (HumanML3D's label threshold)
    noisy = obj.geometric_terms(x0 + 0.05 * torch.randn_like(x0), x0, None)
    assert (noisy[:, :2] > 0).all()
    has_contacts = x0[:, :-1, 259:].sum((1, 2)) > 0
    assert ((noisy[:, 2] > 0) == has_contacts).all() and has_contacts.any()
    # the foot term only counts frames labelled as contacts
    x_nc = x0.clone()
    x_nc[..., 259:] = 0.0
    assert obj.geometric_terms(x_nc + 0.05, x_nc, None)[:, 2].abs().max() < 1e-12


def test_loss_adds_to_the_core_loss_and_trains():
    x0 = _batch()
    base = DiffusionObjective(VPSchedule.cosine(), prediction="x0")
    oracle = _Oracle(x0)
    geo = GeometricObjective(base, pos_weight=1.0, vel_weight=1.0, foot_weight=1.0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    # with the truth predicted, only the truth's own small foot term remains
    assert float(geo.loss(oracle, x0, None, g1)) < 1e-4
    off = GeometricObjective(base, pos_weight=0.0, vel_weight=0.0, foot_weight=0.0)
    net = mdm("tiny", in_dim=263)
    l_off = off.loss(net, x0, None, torch.Generator().manual_seed(3))
    l_on = geo.loss(net, x0, None, g2)
    assert float(l_on.detach()) > float(l_off.detach()) > 0
    l_on.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_one_forward_pass_gives_the_two_pass_loss_and_the_config_factory_normalises():
    from polydiff.core.utils import append_dims
    from polydiff.motion.data import Normalizer
    from polydiff.motion.objective import geometric_objective

    x0 = _batch()
    norm = Normalizer.fit([f for f in x0.numpy()])
    data = type("Data", (), {"normalizer": norm})()
    geo = geometric_objective(data, 1.0, 30.0, 30.0, schedule=VPSchedule.cosine(), prediction="x0")
    assert torch.allclose(geo._features(torch.as_tensor(norm.normalize(x0.numpy()))), x0, atol=1e-4)
    xn = torch.as_tensor(norm.normalize(x0.numpy()))
    net = mdm("tiny", in_dim=263).eval()  # no dropout: both passes see the same network
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    got = geo.loss(net, xn, None, torch.Generator().manual_seed(5))
    assert len(calls) == 1
    # reference: the core loss, then a second denoiser call on the same sigma and noise
    g = torch.Generator().manual_seed(5)
    sigma = geo.base.sample_sigma(2, g, "cpu")
    noise = torch.randn(xn.shape, generator=g)
    diffusion = geo.base.per_sample_loss(net, xn, None, sigma=sigma, noise=noise)
    x = xn + append_dims(sigma, 3).float() * noise
    denoised = geo.base.denoiser(net)(x, sigma.float(), None)
    terms = geo.geometric_terms(denoised, xn, None)
    want = (diffusion + (terms * torch.tensor([1.0, 30.0, 30.0])).sum(-1)).mean()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="objective.data must be a motion dataset"):
        geometric_objective(object(), schedule=VPSchedule.cosine())
