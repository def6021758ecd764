"""polydiff.core: diffusion math only (torch + numpy).

Everything talks to one interface, the denoiser ``D(x, sigma, cond) -> x0_hat`` in
variance-exploding form ``x = x0 + sigma * eps`` (see DESIGN.md).
"""

from polydiff.core.utils import Denoiser, append_dims, append_zero, to_d

__all__ = ["Denoiser", "append_dims", "append_zero", "to_d"]
