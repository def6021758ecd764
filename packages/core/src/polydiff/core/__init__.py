"""polydiff.core: diffusion math only (torch + numpy).

Everything talks to one interface, the denoiser ``D(x, sigma, cond) -> x0_hat`` in
variance-exploding form ``x = x0 + sigma * eps`` (see DESIGN.md). The submodules:

- ``schedules``: discrete/continuous VP, VE, EDM, rectified flow; sigma grids
- ``parameterization``: eps / x0 / v / flow / EDM networks -> denoiser
- ``objective``: ``DiffusionObjective`` (target + weighting + noise-level density)
- ``samplers``: ``sample(denoiser, x, sigmas, method)`` and the ``SAMPLERS`` registry
- ``guidance``, ``editing``, ``inversion``, ``distillation``, ``likelihood``, ``metrics``
- ``toy``: Gaussian mixtures with exact denoisers (the ground truth of the tests)
"""

from polydiff.core import (
    distillation,
    editing,
    guidance,
    inversion,
    likelihood,
    metrics,
    objective,
    parameterization,
    samplers,
    schedules,
    toy,
)
from polydiff.core.guidance import classifier_free_guidance, classifier_guidance
from polydiff.core.objective import DiffusionObjective
from polydiff.core.parameterization import NetworkDenoiser, make_parameterization
from polydiff.core.samplers import SAMPLERS, sample
from polydiff.core.schedules import (
    EDMSchedule,
    FlowSchedule,
    VESchedule,
    VPSchedule,
    karras_sigmas,
)
from polydiff.core.toy import GaussianMixture
from polydiff.core.utils import Denoiser, append_dims, append_zero, to_d

__all__ = [
    "SAMPLERS",
    "Denoiser",
    "DiffusionObjective",
    "EDMSchedule",
    "FlowSchedule",
    "GaussianMixture",
    "NetworkDenoiser",
    "VESchedule",
    "VPSchedule",
    "append_dims",
    "append_zero",
    "classifier_free_guidance",
    "classifier_guidance",
    "distillation",
    "editing",
    "guidance",
    "inversion",
    "karras_sigmas",
    "likelihood",
    "make_parameterization",
    "metrics",
    "objective",
    "parameterization",
    "sample",
    "samplers",
    "schedules",
    "to_d",
    "toy",
]
