"""Exponential moving averages of the weights: warmed-up EMAs and EDM2 power-function EMAs.

Two kinds of average live in one :class:`EMABank`, each in a
``torch.optim.swa_utils.AveragedModel`` (its ``n_averaged`` counts the updates):

- **classic EMA with warm-up** (``decays``): ``ema <- beta_t * ema + (1 - beta_t) * param`` with
  ``beta_t = min(decay, 1 - (1 + t / inv_gamma) ** -power)`` after ``t`` updates (k-diffusion's
  ``EMAWarmup``, diffusers' ``EMAModel.get_decay``; Tan & Le's warm-up). Without the warm-up a
  0.999 EMA still weighs the first weights by 0.999^1500 = 22% after 1500 steps; with it the
  weight of the first ``k`` updates decays like ``exp(-3 t^(1/3))`` (power 2/3).
- **power-function EMA** (``sigma_rels``; Karras et al. 2024, "Analyzing and Improving the
  Training Dynamics of Diffusion Models", sec. 3 and App. C): ``beta_t = (1 - 1/t) ** (gamma + 1)``
  (their eq. 127) averages the whole run with weights ``~ tau^gamma``; ``sigma_rel`` is the
  width of that profile relative to the run length (eq. 123-126). Snapshots of two profiles
  saved during training let :func:`posthoc_coefficients` synthesise any other ``sigma_rel``
  afterwards as a least-squares combination (their Algorithm 3; ``training/phema.py`` of
  NVlabs/edm2 has the same formulas).

:func:`load_weights` is the one place that turns a checkpoint and an EMA request (``True``,
``False``, a decay, ``"sigma_rel:0.05"``, ``"auto"``) into a state dict; ``open_run`` calls it.

**Choosing the weights** (``ema=auto``, the default of ``sample.ema``): no fixed EMA length is
right for every training length (a 0.999 EMA lags a 300-step run; the raw weights of a
constant-LR run are noisier than any average of its end). Following EDM2's advice that the EMA
length is chosen after training, the trainer scores the raw weights, every stored EMA and
post-hoc power EMAs of several widths at each checkpoint on the objective's loss with fixed
data and noise (:class:`HeldOutLoss`, :func:`choose_weights`) and stores the winner in
``state.json`` (``ema_auto``). That loss need not track sample quality (measured: every EMA of
a 1500-step toy run had a lower loss and a worse SWD than the raw weights), so at the end of
training the final checkpoint's candidates are also evaluated with the modality's own metric
(``polydiff.train.ema_sweep.select_ema_by_metric``); sampling with ``ema=auto`` uses that
choice when there is one, else the loss choice, and records which.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = [
    "AUTO_SIGMA_RELS",
    "EMABank",
    "HeldOutLoss",
    "WeightSource",
    "auto_candidates",
    "auto_items",
    "choose_weights",
    "EMASpec",
    "decay_key",
    "load_weights",
    "parse_ema_spec",
    "posthoc_coefficients",
    "power_beta",
    "same_weights",
    "sigma_rel_key",
    "sigma_rel_to_gamma",
    "warmup_decay",
]

SNAPSHOT_DIR = "ema_snapshots"


def decay_key(decay: float) -> str:
    """Stable name of one classic EMA (``"0.999"``), used in checkpoints and configs."""
    return f"{decay:g}"


def sigma_rel_key(sigma_rel: float) -> str:
    """Stable name of one power-function EMA (``"sigma_rel:0.05"``)."""
    return f"sigma_rel:{sigma_rel:g}"


def _module_name(key: str) -> str:  # nn.ModuleDict names cannot hold "."
    return key.replace(".", "_")


# --------------------------------------------------------------------------- formulas
def warmup_decay(decay: float, t: int, inv_gamma: float = 1.0, power: float = 2 / 3) -> float:
    """Decay used at the ``t``-th update (``t = 0`` for the first one, which copies).

    ``min(decay, 1 - (1 + t / inv_gamma) ** -power)``: k-diffusion ``utils.EMAWarmup`` (with
    ``min_value = 0``) and diffusers ``EMAModel.get_decay`` with ``use_ema_warmup``.
    """
    if t <= 0:
        return 0.0
    return min(decay, 1.0 - (1.0 + t / inv_gamma) ** -power)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent ``gamma`` of the power-function profile of relative width ``sigma_rel``.

    Karras et al. 2024, eq. 123: ``sigma_rel^2 = (g + 1) / ((g + 2)^2 (g + 3))``, i.e. the largest
    real root of ``g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2)`` (their eq. 126 / Algorithm 2).
    """
    if not 0.0 < sigma_rel < 12**-0.5:  # gamma > 0 needs sigma_rel < 1/sqrt(12) = 0.2887
        raise ValueError(f"sigma_rel must be in (0, 0.2887), got {sigma_rel}")
    t = sigma_rel**-2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    """Inverse of :func:`sigma_rel_to_gamma` (Karras et al. 2024, eq. 123)."""
    return math.sqrt((gamma + 1) / (gamma + 2) ** 2 / (gamma + 3))


def power_beta(sigma_rel: float, t: int) -> float:
    """``beta_t = (1 - 1/t)^(gamma + 1)`` for the ``t``-th update (1-based; eq. 127)."""
    if t <= 1:
        return 0.0
    return (1.0 - 1.0 / t) ** (sigma_rel_to_gamma(sigma_rel) + 1.0)


def _correlation(a_t: np.ndarray, a_g: np.ndarray, b_t: np.ndarray, b_g: np.ndarray) -> np.ndarray:
    """Inner product of two power-function profiles ending at ``a_t`` and ``b_t``
    (Karras et al. 2024, eq. 151): ``(ga+1)(gb+1) (ta/tb)^e / ((ga+gb+1) max(ta, tb))`` with
    ``e = gb`` if ``ta < tb`` else ``-ga``."""
    ratio = a_t / b_t
    e = np.where(a_t < b_t, b_g, -a_g)
    return (a_g + 1) * (b_g + 1) * ratio**e / ((a_g + b_g + 1) * np.maximum(a_t, b_t))


def posthoc_coefficients(
    in_steps: Iterable[float],
    in_sigma_rels: Iterable[float],
    out_step: float,
    out_sigma_rel: float,
) -> np.ndarray:
    """Weights ``x`` such that ``sum_i x_i * snapshot_i`` best approximates the power-function
    EMA of width ``out_sigma_rel`` at ``out_step`` (least squares in the space of profiles;
    Karras et al. 2024, Algorithm 3: solve ``A x = b`` with the Gram matrix ``A`` of the
    stored profiles and their inner products ``b`` with the wanted one, then normalise to sum 1).
    """
    t = np.asarray(list(in_steps), dtype=np.float64)
    g = np.asarray([sigma_rel_to_gamma(s) for s in in_sigma_rels], dtype=np.float64)
    if t.shape != g.shape or t.size == 0:
        raise ValueError("posthoc_coefficients needs one sigma_rel per snapshot, at least one")
    if np.any(t <= 0):
        raise ValueError(f"snapshot steps must be positive, got {t.tolist()}")
    go = sigma_rel_to_gamma(out_sigma_rel)
    a = _correlation(t[:, None], g[:, None], t[None, :], g[None, :])
    b = _correlation(t, g, np.float64(out_step), np.float64(go))
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    return x / x.sum()


# --------------------------------------------------------------------------- the bank
class EMABank(nn.Module):
    """EMA copies of ``model``: one per classic ``decays`` and one per power-function
    ``sigma_rels``.

    Args:
        model: the (unwrapped) model being trained.
        decays: classic EMA decays, e.g. ``(0.999,)``; each warmed up (see :func:`warmup_decay`).
        start_step: before this optimizer step every EMA simply copies the weights.
        warmup: use the warm-up schedule (default); ``False`` gives the constant-decay EMA.
        inv_gamma, power: warm-up shape (k-diffusion defaults 1 and 2/3).
        sigma_rels: power-function EMA widths, e.g. ``(0.05, 0.10)`` (EDM2's pair).
    """

    def __init__(
        self,
        model: nn.Module,
        decays: Iterable[float],
        start_step: int = 0,
        *,
        warmup: bool = True,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
        sigma_rels: Iterable[float] = (),
    ) -> None:
        super().__init__()
        self.decays = tuple(float(d) for d in decays)
        for d in self.decays:
            if not 0.0 <= d < 1.0:
                raise ValueError(f"EMA decay must be in [0, 1), got {d}")
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self._gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        if inv_gamma <= 0 or power <= 0:
            raise ValueError(
                f"EMA warm-up needs inv_gamma > 0 and power > 0, got {inv_gamma}, {power}"
            )
        self.start_step = int(start_step)
        self.warmup, self.inv_gamma, self.power = bool(warmup), float(inv_gamma), float(power)
        keys = [decay_key(d) for d in self.decays] + [sigma_rel_key(s) for s in self.sigma_rels]
        self.averages = nn.ModuleDict(
            {_module_name(k): AveragedModel(model, use_buffers=True) for k in keys}
        )
        for avg in self.averages.values():
            avg.requires_grad_(False)
        self._src: tuple | None = None  # (model, its params, its buffers), gathered on first update
        self._dst: dict[str, tuple[list, list]] = {}

    def keys(self) -> list[str]:
        return [decay_key(d) for d in self.decays] + [sigma_rel_key(s) for s in self.sigma_rels]

    def __getitem__(self, key: str | float) -> nn.Module:
        """The averaged network (the inner module): ``0.999`` or ``"sigma_rel:0.05"``."""
        if isinstance(key, str) and key.startswith("sigma_rel:"):
            name = sigma_rel_key(float(key.split(":", 1)[1]))
        else:
            name = decay_key(float(key))
        if _module_name(name) not in self.averages:
            raise KeyError(f"no EMA {name}; available: {self.keys()}")
        return self.averages[_module_name(name)].module

    def betas(self, t: int) -> list[float]:
        """The averaging weight of the old EMA at the ``t``-th update (``t = 1`` copies)."""
        out = [
            warmup_decay(d, t - 1, self.inv_gamma, self.power) if self.warmup else d
            for d in self.decays
        ]
        if t <= 1:
            out = [0.0] * len(out)
        out += [0.0 if t <= 1 else (1.0 - 1.0 / t) ** (g + 1.0) for g in self._gammas]
        return out

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the current weights of ``model`` into every EMA (after optimizer step ``step``).

        One fused ``lerp`` per parameter list, on lists gathered once; buffers are copied.
        """
        if not self.averages:
            return
        if self._src is None or self._src[0] is not model:
            self._src = (model, list(model.parameters()), list(model.buffers()))
            self._dst = {
                name: (list(avg.module.parameters()), list(avg.module.buffers()))
                for name, avg in self.averages.items()
            }
        _, params, buffers = self._src
        for i, (name, avg) in enumerate(self.averages.items()):
            dst_params, dst_buffers = self._dst[name]
            if step < self.start_step:
                avg.n_averaged.zero_()
            beta = self.betas(int(avg.n_averaged) + 1)[i]  # this is the t-th update
            if beta == 0.0:
                torch._foreach_copy_(dst_params, params)
            else:
                torch._foreach_lerp_(dst_params, params, 1.0 - beta)
            if buffers:
                torch._foreach_copy_(dst_buffers, buffers)
            avg.n_averaged += 1

    def tensors(self, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Flat ``{"<key>/<name>": tensor}`` for a checkpoint (all EMAs, or only ``keys``)."""
        wanted = self.keys() if keys is None else list(keys)
        out = {}
        for key in wanted:
            for name, t in self.averages[_module_name(key)].state_dict().items():
                out[f"{key}/{name}"] = t
        return out

    def load_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`tensors`; every EMA of this bank must be present."""
        for key in self.keys():
            prefix = f"{key}/"
            sub = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not sub:
                saved = sorted({k.split("/", 1)[0] for k in tensors})
                raise KeyError(f"checkpoint has no EMA {key} (it has {saved})")
            self.averages[_module_name(key)].load_state_dict(sub)


# --------------------------------------------------------------------------- choosing weights
EMASpec = bool | float | str | None

_SPEC_HELP = (
    "expected auto (the raw / EMA weights best by the modality's metric), true (the first "
    "EMA), false (raw weights), a decay such as 0.999, or sigma_rel:<width> such as "
    "sigma_rel:0.05"
)


def parse_ema_spec(spec: Any) -> tuple[str, float | None]:
    """``("auto", None)``, ``("first", None)``, ``("model", None)``, ``("decay", d)`` or
    ``("sigma_rel", s)``.

    Accepts ``True``/``False``/``None``, a float decay in (0, 1), and the strings ``auto``,
    ``true``, ``false``, ``none``, ``null``, ``0.999``, ``sigma_rel:0.05``. Anything else raises a
    ``ValueError`` naming the value and the accepted forms.
    """
    if spec is None or spec is False:
        return "model", None
    if spec is True:
        return "first", None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        value = float(spec)
        if value == 0:
            return "model", None
        if value == 1:
            return "first", None
        if 0.0 < value < 1.0:
            return "decay", value
        raise ValueError(f"ema={spec!r}: a decay must be in (0, 1); {_SPEC_HELP}")
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "auto":
            return "auto", None
        if s in ("false", "none", "null", "no", "off", "0", "raw", "model"):
            return "model", None
        if s in ("true", "yes", "on", "1", "ema"):
            return "first", None
        m = re.fullmatch(r"sigma_rel[:=]([0-9.eE+-]+)", s)
        if m:
            try:
                value = float(m.group(1))
                sigma_rel_to_gamma(value)
            except ValueError:
                raise ValueError(
                    f"ema={spec!r}: sigma_rel must be a number in (0, 0.2887); {_SPEC_HELP}"
                ) from None
            return "sigma_rel", value
        try:
            value = float(s)
        except ValueError:
            raise ValueError(f"ema={spec!r} is not understood; {_SPEC_HELP}") from None
        if math.isfinite(value):
            return parse_ema_spec(value)
    raise ValueError(f"ema={spec!r} is not understood; {_SPEC_HELP}")


def _prefixed(tensors: Mapping[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    prefix = f"{key}/module."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def snapshot_steps(state: Mapping[str, Any]) -> dict[str, str]:
    """``{snapshot file name: sha256}`` of the power-EMA snapshots a checkpoint vouches for."""
    return dict(state.get("ema_snapshots") or {})


def load_weights(
    ckpt_dir: str | Path, ema_spec: EMASpec = True
) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict a checkpoint gives for ``ema_spec``, and its label.

    ``True``: the first EMA the run stored (classic decay first, else the first power EMA);
    ``False``: the raw weights; a decay: that classic EMA; ``"sigma_rel:s"``: that stored
    power-function EMA or, if ``s`` was not stored, its post-hoc reconstruction from the
    snapshots in ``<run>/ema_snapshots/`` plus the checkpoint's own profiles
    (:func:`posthoc_coefficients`); ``"auto"``: the weights the checkpoint's stored choice
    names (:func:`choose_weights`; ``open_run`` scores a checkpoint that has none). Every file
    read is verified against the checkpoint's manifest (SHA-256), and weights that are not
    finite are refused. Labels: ``"model"``, ``"ema:0.999"``, ``"ema:sigma_rel:0.05"``,
    ``"ema:sigma_rel:0.07 (post-hoc from N profiles)"``.
    """
    source = WeightSource.from_checkpoint(ckpt_dir)
    kind, _ = parse_ema_spec(ema_spec)
    if kind == "auto":
        choice = source.state.get("ema_auto")
        if not choice:
            from .checkpoint import CheckpointError

            raise CheckpointError(
                f"ema=auto: {ckpt_dir} stores no automatic EMA choice (trained before it existed "
                "or with trainer.ema_auto_items=0); open it with polydiff sample / evaluate "
                "(which score the candidates) or pick ema=true / false / sigma_rel:<x>"
            )
        ema_spec = choice["choice"]
    return source.weights(ema_spec)


class WeightSource:
    """The weights one checkpoint can give: raw, stored EMAs and post-hoc power EMAs.

    Built from a checkpoint on disk (:meth:`from_checkpoint`: verified once against its
    manifest) or from the trainer's tensors before they are written (``state`` as in
    ``state.json``, ``model`` and ``ema`` tensors as in ``model.safetensors`` /
    ``ema.safetensors``, ``snapshot_dir`` holding the snapshots ``state`` lists).
    """

    def __init__(
        self,
        state: Mapping[str, Any],
        model: Any,
        ema: Any,
        snapshot_dir: Path | None,
        where: str,
    ) -> None:
        self.state, self._model, self._ema = state, model, ema
        self.snapshot_dir, self.where = snapshot_dir, where
        self.decays = list(state.get("ema_decays") or [])
        self.powers = list(state.get("ema_sigma_rels") or [])
        self._snapshots: dict[tuple[int, str], dict[str, torch.Tensor]] | None = None

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path) -> WeightSource:
        from .checkpoint import load_tensors, read_state, verify_checkpoint

        ckpt = Path(ckpt_dir)
        verify_checkpoint(ckpt)
        return cls(
            read_state(ckpt),
            lambda: load_tensors(ckpt / "model.safetensors"),
            lambda: load_tensors(ckpt / "ema.safetensors"),
            ckpt.parent.parent / SNAPSHOT_DIR,
            str(ckpt),
        )

    def _tensors(self, which: str) -> Mapping[str, torch.Tensor]:
        value = getattr(self, which)
        if callable(value):
            value = value()
            setattr(self, which, value)
        return value

    def weights(self, ema_spec: EMASpec) -> tuple[dict[str, torch.Tensor], str]:
        """``(state dict, label)`` for ``ema_spec`` (any form but ``"auto"``); finite only."""
        from .checkpoint import CheckpointError, non_finite_tensors

        weights, label = self._weights(ema_spec)
        bad = non_finite_tensors(weights)
        if bad:
            raise CheckpointError(
                f"{self.where}: the {label} weights are not finite ({bad[0]!r} and "
                f"{len(bad) - 1} more): not a usable checkpoint; pick an earlier one with "
                "checkpoint=<dir>"
            )
        return weights, label

    def _weights(self, ema_spec: EMASpec) -> tuple[dict[str, torch.Tensor], str]:
        from .checkpoint import CheckpointError

        kind, value = parse_ema_spec(ema_spec)
        if kind == "auto":
            raise ValueError("ema=auto is resolved by load_weights / choose_weights first")
        decays, powers = self.decays, self.powers
        stored = decays + powers
        if kind == "model" or (kind == "first" and not stored):
            return dict(self._tensors("_model")), "model"
        if kind == "first":
            key = stored[0]
        elif kind == "decay":
            key = decay_key(value)
            if key not in decays:
                raise CheckpointError(
                    f"ema={ema_spec!r}: {self.where} has no EMA with decay {key}; it has decays "
                    f"{decays} and power EMAs {powers}"
                )
        else:
            key = sigma_rel_key(value)
        if key in stored:
            weights = _prefixed(self._tensors("_ema"), key)
            if not weights:
                raise CheckpointError(
                    f"{self.where}/ema.safetensors has no EMA {key} (the state lists {stored})"
                )
            return weights, f"ema:{key}"
        if not powers:
            raise CheckpointError(
                f"ema={ema_spec!r}: {self.where} stored no power-function EMA "
                "(trainer.ema_sigma_rels was empty), so sigma_rel cannot be reconstructed; it "
                f"has decays {decays}"
            )
        return self._reconstruct(value)

    def _profiles(self) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
        """``{(step, power key): weights}``: the checkpoint's own profiles and every earlier
        snapshot it vouches for (SHA-256 checked)."""
        from .checkpoint import CheckpointError, load_tensors, sha256_file

        if self._snapshots is not None:
            return self._snapshots
        step = int(self.state["step"])
        ema = self._tensors("_ema")
        sources = {(step, key): _prefixed(ema, key) for key in self.powers}
        snap_dir = self.snapshot_dir or Path(".")
        for name, digest in sorted(snapshot_steps(self.state).items()):
            path = snap_dir / name
            m = re.fullmatch(r"step_(\d+)\.safetensors", name)
            if m is None:
                raise CheckpointError(f"unexpected snapshot name {path}")
            if int(m.group(1)) >= step:
                continue
            if not path.is_file():
                raise CheckpointError(
                    f"power-EMA snapshot missing: {path} (listed by {self.where})"
                )
            actual = sha256_file(path)
            if actual != digest:
                raise CheckpointError(
                    f"power-EMA snapshot modified or corrupt: {path} has SHA-256 "
                    f"{actual[:16]}..., {self.where}/state.json says {digest[:16]}..."
                )
            snap = load_tensors(path)
            for key in self.powers:
                sources[(int(m.group(1)), key)] = _prefixed(snap, key)
        self._snapshots = sources
        return sources

    def _reconstruct(self, sigma_rel: float) -> tuple[dict[str, torch.Tensor], str]:
        sources = self._profiles()
        step = int(self.state["step"])
        order = sorted(sources)
        coefs = posthoc_coefficients(
            [t for t, _ in order], [float(k.split(":", 1)[1]) for _, k in order], step, sigma_rel
        )
        out: dict[str, torch.Tensor] = {}
        for name, ref in sources[order[0]].items():
            if not ref.is_floating_point():
                out[name] = sources[(step, self.powers[0])][name]
                continue
            acc = torch.zeros(ref.shape, dtype=torch.float64)
            for c, src in zip(coefs, order):
                acc += float(c) * sources[src][name].double()
            out[name] = acc.to(ref.dtype)
        label = f"ema:{sigma_rel_key(sigma_rel)} (post-hoc from {len(order)} profiles)"
        return out, label


# --------------------------------------------------------------------------- choosing automatically
AUTO_SIGMA_RELS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25)


def auto_candidates(
    state: Mapping[str, Any], posthoc_sigma_rels: Iterable[float] = AUTO_SIGMA_RELS
) -> list[str]:
    """What ``ema=auto`` chooses from: the raw weights, every stored EMA and, when the run
    tracked power-function EMAs, their post-hoc reconstructions at ``posthoc_sigma_rels``."""
    decays = list(state.get("ema_decays") or [])
    powers = list(state.get("ema_sigma_rels") or [])
    posthoc = [sigma_rel_key(s) for s in posthoc_sigma_rels] if powers else []
    return ["false", *decays, *powers, *(k for k in posthoc if k not in powers)]


def auto_items(trainer: Mapping[str, Any]) -> int:
    """Items ``ema=auto`` scores for a run with these trainer settings: ``ema_auto_items``
    (256 when 0 or unset), never more than the run trained on (``max_steps x batch_size x
    grad_accum``), so that scoring a smoke run costs about as much as training it."""
    seen = int(trainer.get("max_steps") or 1) * int(trainer.get("batch_size") or 1)
    seen *= int(trainer.get("grad_accum") or 1)
    return max(1, min(int(trainer.get("ema_auto_items") or 256), seen))


class HeldOutLoss:
    """The objective's loss of given weights on fixed data with fixed noise.

    ``items`` rows of ``dataset`` (a fixed random subset) are each noised ``draws`` times from
    generators seeded by ``(seed, draw, chunk)``: every set of weights sees the same sigmas,
    noise and condition dropout (common random numbers), so differences between weights are
    not drowned by the spread of the loss over sigma. The loss is the training objective's own
    (``objective.loss``; EDM-weighted for EDM), i.e. the quantity Polyak / EMA averaging is
    meant to lower.
    """

    def __init__(
        self,
        net: nn.Module,
        objective: Any,
        dataset: Any,
        *,
        items: int = 256,
        draws: int = 1,
        seed: int = 0,
        batch_size: int = 256,
        device: torch.device | str = "cpu",
    ) -> None:
        from torch.utils.data import default_collate

        from .data import split_batch

        if items < 1 or draws < 1 or batch_size < 1:
            raise ValueError(
                f"HeldOutLoss needs items, draws, batch_size >= 1, got {items}, {draws}, "
                f"{batch_size}"
            )
        n = min(int(items), len(dataset))
        idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
        if hasattr(dataset, "get_batch"):
            batch = dataset.get_batch(idx)
        else:
            batch = default_collate([dataset[i] for i in idx.tolist()])
        x, cond = split_batch(batch)
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.cond = None if cond is None else {k: v.to(self.device) for k, v in cond.items()}
        self.net, self.objective = net, objective
        self.items, self.draws, self.seed, self.batch_size = n, int(draws), seed, batch_size

    def describe(self) -> str:
        return (
            f"objective loss on {self.items} fixed training items x {self.draws} fixed noise "
            "draws (common random numbers)"
        )

    @torch.no_grad()
    def __call__(self, weights: Mapping[str, torch.Tensor]) -> float:
        self.net.load_state_dict(weights)
        was_training = self.net.training
        self.net.eval()
        fn = getattr(self.objective, "loss", self.objective)
        total = 0.0
        for d in range(self.draws):
            for lo in range(0, self.items, self.batch_size):
                sl = slice(lo, lo + self.batch_size)
                cond = None if self.cond is None else {k: v[sl] for k, v in self.cond.items()}
                gen = torch.Generator(device=self.device).manual_seed(
                    (self.seed * 1_000_003 + d) * 1_000_003 + lo
                )
                loss = fn(self.net, self.x[sl], cond, generator=gen)
                total += float(loss) * len(self.x[sl])
        self.net.train(was_training)
        return total / (self.items * self.draws)


def same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Bit-identical state dicts (warmed-up EMAs of different decays coincide for a while)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def choose_weights(
    source: WeightSource | str | Path,
    score: Callable[[Mapping[str, torch.Tensor]], float],
    candidates: Iterable[str] | None = None,
    criterion: str = "",
) -> dict[str, Any]:
    """Score every candidate (default :func:`auto_candidates`) and return the record
    ``{"choice", "weights", "criterion", "losses": {spec: loss}}`` of the lowest.

    EDM2's advice (Karras et al. 2024, sec. 3.2): the EMA length is a choice made after
    training, not a constant; here it is made by ``score`` (:class:`HeldOutLoss`). A candidate
    that cannot be built (non-finite weights) is recorded as ``inf`` and never chosen.
    """
    if not isinstance(source, WeightSource):
        source = WeightSource.from_checkpoint(source)
    from .checkpoint import CheckpointError

    specs = list(candidates) if candidates is not None else auto_candidates(source.state)
    losses: dict[str, float] = {}
    labels: dict[str, str] = {}
    seen: list[tuple[dict[str, torch.Tensor], float]] = []
    for spec in specs:
        try:
            weights, labels[spec] = source.weights(spec)
        except CheckpointError as err:
            if "not finite" not in str(err):
                raise
            losses[spec] = math.inf
            continue
        # warmed-up EMAs of different decays coincide until the warm-up reaches them
        same = next((v for w, v in seen if same_weights(w, weights)), None)
        value = float(score(weights)) if same is None else same
        seen.append((weights, value))
        losses[spec] = value if math.isfinite(value) else math.inf
    finite = {k: v for k, v in losses.items() if math.isfinite(v)}
    if not finite:
        raise CheckpointError(f"ema=auto: no candidate of {source.where} has a finite loss")
    best = min(finite, key=lambda k: (finite[k], specs.index(k)))
    return {
        "choice": best,
        "weights": labels[best],
        "criterion": criterion,
        "losses": {k: (v if math.isfinite(v) else None) for k, v in losses.items()},
    }
