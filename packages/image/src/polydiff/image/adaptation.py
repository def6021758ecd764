"""Adapting a trained image model to a new concept from a few images.

The new concept is addressed by a *token*: a class index the base model never saw in training
(its embedding row is as good as a rare word, DreamBooth's "[V]"), e.g. digit 9 for a model
trained on digits 0-8. Three methods, each trained with ``polydiff.train.Trainer``:

- :func:`train_lora`: LoRA (Hu et al. 2021) through :mod:`polydiff.nn.lora` on the attention
  projections, the embedding projections of the residual blocks (``emb_proj``, where the class
  enters) and optionally the block convolutions; base frozen; the adapter is saved alone.
- :func:`train_dreambooth`: DreamBooth (Ruiz et al. 2023): the whole model fine-tuned on the
  concept images under the token, plus the class-specific prior-preservation loss
  ``lambda * ||D(x_pr + s eps, c_pr) - x_pr||^2`` on samples the frozen model generated for the
  old classes (paper eq. 2), so the old classes are not forgotten.
- :func:`train_textual_inversion`: textual inversion (Gal et al. 2023) for class-conditional
  models: a new conditioning embedding (one row for the token) optimised with every network
  weight frozen; it replaces the token's class embedding through a forward hook
  (:class:`ClassTokenEmbedding`) and is saved alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from polydiff.nn.embeddings import ClassEmbedding
from polydiff.nn.lora import ATTENTION_TARGETS, add_lora, save_lora
from polydiff.train import TensorDictDataset, fit_parameters

__all__ = [
    "AdaptConfig",
    "AdaptJob",
    "ClassTokenEmbedding",
    "DreamBoothLoss",
    "adapt",
    "adapt_run",
    "concept_dataset",
    "finetune",
    "fit_adapt_job",
    "load_token_embedding",
    "nearest_class",
    "prior_dataset",
    "save_token_embedding",
    "train_dreambooth",
    "train_lora",
    "train_textual_inversion",
]

LORA_TARGETS: tuple[str, ...] = (*ATTENTION_TARGETS, "emb_proj")


# --------------------------------------------------------------------------------------------
# Data and the shared fine-tuning loop
# --------------------------------------------------------------------------------------------


def concept_dataset(images: torch.Tensor, token: int, min_length: int = 64) -> TensorDictDataset:
    """The few concept images (N, C, H, W) labelled with ``token``, repeated to at least
    ``min_length`` rows so that a training batch fits."""
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"concept images must be a non-empty (N, C, H, W), got {images.shape}")
    reps = max(1, -(-min_length // len(images)))
    x = images.float().repeat(reps, 1, 1, 1)
    return TensorDictDataset(x, **{"class": torch.full((len(x),), int(token), dtype=torch.long)})


def _num_classes(net: nn.Module) -> int:
    label = _class_embedding(net)
    return label.num_classes


def _class_embedding(net: nn.Module) -> ClassEmbedding:
    found = [m for m in net.modules() if isinstance(m, ClassEmbedding)]
    if len(found) != 1:
        raise ValueError(
            f"expected one class-conditional embedding (polydiff.nn ClassEmbedding) in "
            f"{type(net).__name__}, found {len(found)}"
        )
    return found[0]


def _check_token(net: nn.Module, token: int) -> None:
    n = _num_classes(net)
    if not 0 <= token < n:
        raise ValueError(f"token {token} is not a class index of this model (0..{n - 1})")


def finetune(
    model: nn.Module,
    loss: Any,
    dataset: Dataset,
    *,
    steps: int,
    lr: float,
    batch_size: int = 16,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> dict[str, float]:
    """Train the parameters of ``model`` that require grad with ``polydiff.train.Trainer``
    (no EMA, no files); returns the last logged metrics (loss, grad_norm, ...)."""
    was_training = model.training
    trainer = fit_parameters(
        model,
        loss,
        dataset,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        weight_decay=weight_decay,
    )
    model.train(was_training)
    return trainer.last_metrics


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


def train_lora(
    net: nn.Module,
    objective: Any,
    images: torch.Tensor,
    token: int,
    prior_images: torch.Tensor | None = None,
    prior_labels: torch.Tensor | None = None,
    *,
    prior_weight: float = 1.0,
    rank: int = 4,
    include_convs: bool = True,
    steps: int = 200,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    save_to: str | os.PathLike | None = None,
) -> nn.Module:
    """LoRA fine-tuning of ``net`` (in place) on the concept ``images`` under class ``token``.

    Targets :data:`LORA_TARGETS` (attention + the class/time embedding projections) and, with
    ``include_convs``, the residual-block convolutions; the base weights stay frozen. With prior
    data (:func:`prior_dataset`) the loss adds DreamBooth's prior-preservation term
    (:class:`DreamBoothLoss`). With ``save_to`` the adapter alone is written
    (``polydiff.nn.lora.save_lora``).
    """
    _check_token(net, token)
    add_lora(net, rank=rank, targets=LORA_TARGETS, include_convs=include_convs)
    data = _concept_data(
        images, token, prior=(prior_images, prior_labels), prior_weight=prior_weight,
        batch_size=batch_size,
    )  # fmt: skip
    finetune(
        net, DreamBoothLoss(objective, prior_weight), data, steps=steps, lr=lr,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    if save_to is not None:
        save_lora(net, save_to)
    return net


# --------------------------------------------------------------------------------------------
# DreamBooth with prior preservation
# --------------------------------------------------------------------------------------------


class _PairedDataset(Dataset):
    """Item i: concept image ``i mod N`` with its token and prior sample i with its class."""

    def __init__(
        self, concept: torch.Tensor, token: int, prior: torch.Tensor, labels: torch.Tensor
    ):
        self.concept, self.token = concept.float(), int(token)
        self.prior, self.labels = prior.float(), labels.long()

    def __len__(self) -> int:
        return len(self.prior)

    def get_batch(self, indices) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {
            "x": self.concept[idx % len(self.concept)],
            "class": torch.full((len(idx),), self.token, dtype=torch.long),
            "prior_x": self.prior[idx],
            "prior_class": self.labels[idx],
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.get_batch([i]).items()}


def _concept_data(
    images: torch.Tensor,
    token: int,
    *,
    prior: tuple[torch.Tensor | None, torch.Tensor | None],
    prior_weight: float,
    batch_size: int,
) -> Dataset:
    """The concept dataset, paired with ``prior = (images, labels)`` samples when there are any
    (and a weight)."""
    prior_images, prior_labels = prior
    if prior_images is None or prior_weight == 0:
        return concept_dataset(images, token, 4 * batch_size)
    if prior_labels is None or len(prior_labels) != len(prior_images):
        raise ValueError("prior_images need prior_labels of the same length")
    if len(prior_images) < batch_size:
        raise ValueError(
            f"need at least batch_size={batch_size} prior images, got {len(prior_images)}"
        )
    return _PairedDataset(images, token, prior_images, prior_labels)


@torch.no_grad()
def prior_dataset(
    denoiser: Any,
    shape: tuple[int, ...],
    classes: list[int],
    n: int,
    sigmas: torch.Tensor,
    *,
    method: str = "heun",
    seed: int = 0,
    batch_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of the frozen model for the old ``classes`` (cycled): DreamBooth's
    class-specific prior data. Returns ``(images (n, *shape), labels (n,))``."""
    from polydiff.train import SamplerSpec, generate

    labels = torch.as_tensor(classes, dtype=torch.long).repeat(-(-n // len(classes)))[:n]
    spec = SamplerSpec(method=method, steps=len(sigmas) - 1, schedule=lambda _: sigmas)
    images = generate(
        denoiser, shape, n, spec, cond={"class": labels},
        generator=torch.Generator().manual_seed(seed), batch_size=batch_size,
    )  # fmt: skip
    return images.clamp(-1, 1), labels


class DreamBoothLoss:
    """``L(concept, token) + prior_weight * L(prior, prior class)`` (Ruiz et al. 2023, eq. 2),
    both terms the inner objective's loss; a loss callable for ``polydiff.train.Trainer``."""

    def __init__(self, objective: Any, prior_weight: float = 1.0) -> None:
        self.objective, self.prior_weight = objective, float(prior_weight)
        self.schedule = getattr(objective, "schedule", None)

    def denoiser(self, net: nn.Module):
        return self.objective.denoiser(net)

    def __call__(
        self,
        net: nn.Module,
        x: torch.Tensor,
        cond: Mapping[str, torch.Tensor] | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        cond = dict(cond or {})
        prior_x, prior_class = cond.pop("prior_x", None), cond.pop("prior_class", None)
        loss = self.objective.loss(net, x, cond, generator=generator)
        if self.prior_weight and prior_x is not None:
            prior = self.objective.loss(net, prior_x, {"class": prior_class}, generator=generator)
            loss = loss + self.prior_weight * prior
        return loss


def train_dreambooth(
    net: nn.Module,
    objective: Any,
    images: torch.Tensor,
    token: int,
    prior_images: torch.Tensor | None = None,
    prior_labels: torch.Tensor | None = None,
    *,
    prior_weight: float = 1.0,
    steps: int = 200,
    lr: float = 2e-4,
    batch_size: int = 16,
    seed: int = 0,
) -> nn.Module:
    """DreamBooth: fine-tune every weight of ``net`` (in place) on the concept under ``token``,
    with the prior-preservation term on ``(prior_images, prior_labels)`` (from
    :func:`prior_dataset`); ``prior_weight=0`` or no prior data is plain fine-tuning."""
    _check_token(net, token)
    net.requires_grad_(True)
    data = _concept_data(
        images, token, prior=(prior_images, prior_labels), prior_weight=prior_weight,
        batch_size=batch_size,
    )  # fmt: skip
    loss = DreamBoothLoss(objective, prior_weight)
    finetune(net, loss, data, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    return net


# --------------------------------------------------------------------------------------------
# Textual inversion (a new class embedding, model frozen)
# --------------------------------------------------------------------------------------------


class ClassTokenEmbedding(nn.Module):
    """A frozen class-conditional network whose class ``token`` uses a learned embedding.

    ``forward(x, t, cond)`` is the network's, except that rows with ``cond["class"] == token``
    (and not nulled) get :attr:`embedding` instead of the table's row: a forward hook on the
    network's :class:`polydiff.nn.embeddings.ClassEmbedding`. Only :attr:`embedding` trains.
    """

    def __init__(self, net: nn.Module, token: int, init_from: int | None = None) -> None:
        super().__init__()
        _check_token(net, token)
        self.net = net.requires_grad_(False)
        self.token = int(token)
        self.init_from = init_from
        label = _class_embedding(net)
        row = label.table.weight[init_from if init_from is not None else token]
        self.embedding = nn.Parameter(row.detach().clone())  # (E,)
        self._hook = label.register_forward_hook(self._replace)

    @property
    def accepts_null_mask(self) -> bool:
        return bool(getattr(self.net, "accepts_null_mask", False))

    def _replace(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        labels = inputs[0].long()
        hit = labels == self.token
        if len(inputs) > 1 and inputs[1] is not None:
            hit = hit & ~inputs[1].to(hit.device).bool()
        return torch.where(hit[:, None], self.embedding.to(output.dtype)[None], output)

    def remove(self) -> nn.Module:
        """Detach the hook and return the untouched network."""
        self._hook.remove()
        return self.net

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return self.net(x, t, cond)


@torch.no_grad()
def nearest_class(
    net: nn.Module,
    objective: Any,
    images: torch.Tensor,
    classes: list[int] | None = None,
    *,
    n_levels: int = 16,
    seed: int = 0,
) -> int:
    """The class under which ``images`` are best denoised (lowest mean denoising loss at fixed
    noise levels and draws): the closest existing "word" for the concept, textual inversion's
    initialisation (Gal et al. 2023 start from a coarse descriptor of the concept).

    ``objective`` needs ``per_sample_loss(net, x0, cond, sigma=, noise=)``
    (:class:`polydiff.core.objective.DiffusionObjective`); ``classes`` default to all.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"concept images must be a non-empty (N, C, H, W), got {images.shape}")
    classes = list(range(_num_classes(net))) if classes is None else list(classes)
    g = torch.Generator().manual_seed(seed)
    x0 = images.float().repeat_interleave(n_levels, 0)  # (N * L, C, H, W)
    sigma = torch.logspace(-1.5, 1.0, n_levels, dtype=torch.float64).repeat(len(images))
    noise = torch.randn(x0.shape, generator=g).to(x0)
    was_training = net.training
    net.eval()
    losses = []
    for c in classes:
        cond = {"class": torch.full((len(x0),), int(c), dtype=torch.long)}
        loss = objective.per_sample_loss(net, x0, cond, sigma=sigma, noise=noise)
        losses.append(float(loss.mean()))
    net.train(was_training)
    return classes[min(range(len(classes)), key=losses.__getitem__)]


def train_textual_inversion(
    net: nn.Module,
    objective: Any,
    images: torch.Tensor,
    token: int,
    *,
    init_from: int | str | None = None,
    steps: int = 200,
    lr: float = 5e-3,
    batch_size: int = 16,
    seed: int = 0,
    save_to: str | os.PathLike | None = None,
) -> ClassTokenEmbedding:
    """Textual inversion: optimise one embedding for ``token`` with ``net`` frozen; returns the
    wrapped model (sample with it). ``init_from`` starts from another class's row (the paper
    starts from a coarse descriptor word); ``"nearest"`` picks it with :func:`nearest_class`
    among the other classes."""
    if init_from == "nearest":
        others = [c for c in range(_num_classes(net)) if c != token]
        init_from = nearest_class(net, objective, images, others, seed=seed)
    elif isinstance(init_from, str):
        raise ValueError(f"init_from must be a class index, None or 'nearest', got {init_from!r}")
    model = ClassTokenEmbedding(net, token, init_from)
    finetune(
        model, objective, concept_dataset(images, token, 4 * batch_size), steps=steps, lr=lr,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    if save_to is not None:
        save_token_embedding(model, save_to)
    return model


def save_token_embedding(model: ClassTokenEmbedding, path: str | os.PathLike) -> Path:
    """Write the learned embedding alone (safetensors, atomic)."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file(
        {"embedding": model.embedding.detach().cpu().contiguous()}, str(tmp),
        metadata={"token": str(model.token)},
    )  # fmt: skip
    os.replace(tmp, target)
    return target


def load_token_embedding(net: nn.Module, path: str | os.PathLike) -> ClassTokenEmbedding:
    """Wrap ``net`` with an embedding written by :func:`save_token_embedding`."""
    from safetensors import safe_open

    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"token embedding file not found: {source}")
    with safe_open(str(source), "pt") as f:
        meta = f.metadata() or {}
        if "token" not in meta or "embedding" not in f.keys():  # noqa: SIM118
            raise ValueError(f"{source} is not a token-embedding file (no 'token' metadata)")
        embedding = f.get_tensor("embedding")
    model = ClassTokenEmbedding(net, int(meta["token"]))
    if embedding.shape != model.embedding.shape:
        raise ValueError(
            f"{source}: embedding of shape {tuple(embedding.shape)} does not fit this model's "
            f"{tuple(model.embedding.shape)}"
        )
    with torch.no_grad():
        model.embedding.copy_(embedding)
    return model


# --------------------------------------------------------------------------------------------
# Configs and runs (``polydiff adapt``)
# --------------------------------------------------------------------------------------------

ADAPT_METHODS = ("lora", "dreambooth", "textual_inversion")


@dataclass
class AdaptConfig:
    """One adaptation job (the ``adapt`` node of ``configs/experiment/image/edit_adapt_*.yaml``).

    The concept images are ``n_images`` images of class ``concept_class`` from the digits
    ``split`` (``test`` or ``train``; or ``images``: an ``.npz`` with ``images`` (N, C, H, W) in
    [-1, 1]); they are taught to class ``token``. ``prior_weight > 0`` adds DreamBooth's prior
    preservation on ``n_prior`` samples of the frozen model for the classes other than the token
    (LoRA and DreamBooth).
    ``init_from``: textual inversion's start (a class, ``"nearest"`` or None = the token's row).
    """

    method: str = "lora"
    token: int = 9
    concept_class: int = 9
    n_images: int = 5
    images: str | None = None
    split: str = "test"
    steps: int = 400
    lr: float = 3e-3
    batch_size: int = 16
    rank: int = 4
    prior_weight: float = 1.0
    n_prior: int = 144
    init_from: int | str | None = "nearest"
    guidance_scale: float = 3.0
    sample_steps: int = 12
    n_samples: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ADAPT_METHODS:
            raise ValueError(f"adapt.method={self.method!r}; choose one of {ADAPT_METHODS}")
        if self.split not in ("train", "test"):
            raise ValueError(f"adapt.split={self.split!r}; choose 'train' or 'test'")
        for name in ("steps", "n_images", "batch_size", "rank", "sample_steps", "n_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"adapt.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.prior_weight < 0:
            raise ValueError(
                f"adapt: need lr > 0 and prior_weight >= 0: {self.lr, self.prior_weight}"
            )


def _concept_images(cfg: AdaptConfig, size: int) -> torch.Tensor:
    if cfg.images:
        import numpy as np

        source = Path(cfg.images)
        if not source.is_file():
            raise FileNotFoundError(f"adapt.images: {source} not found (an .npz with 'images')")
        with np.load(source) as f:
            if "images" not in f:
                raise ValueError(f"{source} has no 'images' array (keys: {sorted(f.files)})")
            return torch.from_numpy(f["images"][: cfg.n_images]).float()
    from .data import DigitsDataset

    images = DigitsDataset(size=size, split=cfg.split, classes=[cfg.concept_class]).images
    if len(images) == 0:
        raise ValueError(f"adapt.concept_class={cfg.concept_class}: no such digits class")
    return images[: cfg.n_images]


def adapt(
    cfg: AdaptConfig, net: nn.Module, objective: Any, images: torch.Tensor, sigmas: torch.Tensor
) -> tuple[nn.Module, dict[str, Any]]:
    """Run the adaptation ``cfg`` on ``net`` (modified in place; textual inversion wraps it)
    with the concept ``images``; returns ``(adapted model, info)``."""
    from polydiff.core.guidance import classifier_free_guidance

    info: dict[str, Any] = {"method": cfg.method, "token": cfg.token, "n_images": len(images)}
    common = {"steps": cfg.steps, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed}
    prior: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    if cfg.method != "textual_inversion" and cfg.prior_weight > 0:
        others = [c for c in range(_num_classes(net)) if c != cfg.token]
        frozen = classifier_free_guidance(objective.denoiser(net.eval()), cfg.guidance_scale)
        prior = prior_dataset(
            frozen, tuple(images.shape[1:]), classes=others, n=max(cfg.n_prior, cfg.batch_size),
            sigmas=sigmas, seed=cfg.seed,
        )  # fmt: skip
        info["n_prior"] = len(prior[0])
    if cfg.method == "lora":
        model = train_lora(
            net, objective, images, cfg.token, *prior, prior_weight=cfg.prior_weight,
            rank=cfg.rank, **common,
        )  # fmt: skip
    elif cfg.method == "dreambooth":
        model = train_dreambooth(
            net, objective, images, cfg.token, *prior, prior_weight=cfg.prior_weight, **common
        )
    else:
        model = train_textual_inversion(
            net, objective, images, cfg.token, init_from=cfg.init_from, **common
        )
        info["init_from"] = model.init_from
    return model.eval(), info


@dataclass
class AdaptJob:
    """A fitted adaptation job: the opened run, its settings, the concept images, the adapted
    model, what :func:`adapt` reported and the sampling grid of the job."""

    run: Any
    cfg: AdaptConfig
    images: torch.Tensor
    model: nn.Module
    info: dict[str, Any]
    sigmas: torch.Tensor


def fit_adapt_job(
    run_dir: str | os.PathLike,
    overrides: tuple[str, ...] | list[str] = (),
    adapt_cfg: AdaptConfig | Mapping | None = None,
) -> AdaptJob:
    """The fitting half of ``polydiff adapt run=<dir> [adapt=... adapt.<key>=...]``: open the run,
    compose its :class:`AdaptConfig` (as :func:`adapt_run`), and adapt its model in memory."""
    from polydiff.train.run import open_run, run_job_config, with_job_default

    run = open_run(run_dir, with_job_default(run_dir, overrides, "adapt", "lora"))
    cfg = run_job_config(run, "adapt", cls=AdaptConfig, given=adapt_cfg, param="adapt_cfg")
    _check_token(run.model, cfg.token)
    images = _concept_images(cfg, tuple(run.sample_shape)[-1])
    sigmas = run.objective.schedule.sigmas_for(cfg.sample_steps).float()
    net = run.model.requires_grad_(False)
    model, info = adapt(cfg, net, objective=run.objective, images=images, sigmas=sigmas)
    return AdaptJob(run=run, cfg=cfg, images=images, model=model, info=info, sigmas=sigmas)


def adapt_run(
    run_dir: str,
    overrides: tuple[str, ...] | list[str] = (),
    out: str | None = None,
    adapt_cfg: AdaptConfig | Mapping | None = None,
) -> dict[str, Any]:
    """``polydiff adapt run=<dir> [adapt=textual_inversion adapt.steps=200 ...]``: adapt any
    trained class-conditional image run to a concept (:class:`AdaptConfig` from the
    ``configs/adapt/`` option chosen by ``adapt=<method>``, else the run config's ``adapt`` node,
    else ``lora``) and write into ``out`` (default ``<run>/adapt/<method>-<hash of the
    settings>``) the adapter alone
    (``lora.safetensors`` / ``token.safetensors``; DreamBooth: ``model.safetensors``), a sample
    grid of the token (``samples.png``) and ``adapt.json``. Returns the written info."""
    import dataclasses
    import json

    from safetensors.torch import save_file

    from polydiff.core.guidance import classifier_free_guidance
    from polydiff.train.run import job_dir

    from .io import save_image_grid

    job = fit_adapt_job(run_dir, overrides, adapt_cfg)
    run, cfg, images, model, info = job.run, job.cfg, job.images, job.model, job.info
    shape, objective, sigmas = tuple(run.sample_shape), run.objective, job.sigmas
    settings = {"adapt": dataclasses.asdict(cfg), "checkpoint": run.checkpoint.name}
    target = Path(out) if out else job_dir(Path(run_dir) / "adapt", cfg.method, settings)
    target.mkdir(parents=True, exist_ok=True)
    if cfg.method == "lora":
        save_lora(model, target / "lora.safetensors")
        info["files"] = ["lora.safetensors"]
    elif cfg.method == "textual_inversion":
        save_token_embedding(model, target / "token.safetensors")
        info["files"] = ["token.safetensors"]
    else:
        tmp = target / "model.safetensors.tmp"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp))
        os.replace(tmp, target / "model.safetensors")
        info["files"] = ["model.safetensors"]
    from polydiff.train import SamplerSpec, generate

    D = classifier_free_guidance(objective.denoiser(model), cfg.guidance_scale)
    spec = SamplerSpec(method="heun", steps=cfg.sample_steps, schedule=lambda _: sigmas)
    with torch.no_grad():
        x = generate(
            D, shape, cfg.n_samples, spec,
            cond={"class": torch.full((cfg.n_samples,), cfg.token, dtype=torch.long)},
            generator=torch.Generator().manual_seed(cfg.seed),
        ).clamp(-1, 1)  # fmt: skip
    save_image_grid(torch.cat([images, x]), target / "samples.png", scale=4)
    info["files"] += ["samples.png", "adapt.json"]
    info["config"] = dataclasses.asdict(cfg)
    info["run"], info["checkpoint"] = str(run_dir), str(run.checkpoint)
    (target / "adapt.json").write_text(json.dumps(info, indent=1, default=str))
    return info | {"out": str(target)}
