"""The training loop: HF accelerate for devices and processes, EMA, checkpoints, logs.

Read top to bottom: :meth:`Trainer.fit` calls :meth:`Trainer.train_step` until ``max_steps``,
logging every ``log_every`` steps, checkpointing every ``ckpt_every`` and sampling with the EMA
every ``sample_every``. One step = ``grad_accum`` micro-batches, each ``batch_size`` rows per
process, then gradient clipping, the optimizer and LR-scheduler steps and the EMA update.

Processes and devices come from accelerate: ``torchrun --nproc_per_node N`` or
``accelerate launch`` gives DDP (gloo on CPU); FSDP and DeepSpeed ZeRO are chosen in
accelerate's own config file (``accelerate config``) and need no change here (untested on this
CPU-only machine). Randomness is reproducible: the data order is a function of
``(seed, epoch)``, the objective's noise generator is reseeded at every micro-batch from
``(seed, rank, step, micro)``, and the global RNG states are saved in checkpoints, so a run
stopped and resumed ends bit-identical to one that never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from polydiff.core.fileio import atomic_path, atomic_write_text

from .checkpoint import (
    CheckpointError,
    flatten_optimizer_state,
    latest_checkpoint,
    load_checkpoint_files,
    non_finite_tensors,
    prune_checkpoints,
    save_checkpoint_files,
    sha256_file,
    unflatten_optimizer_state,
)
from .config import ConfigError
from .data import BatchOrder, make_loader, split_batch
from .ema import (
    SNAPSHOT_DIR,
    EMABank,
    HeldOutLoss,
    WeightSource,
    auto_items,
    choose_weights,
    decay_key,
    sigma_rel_key,
)
from .hooks import draw, write_outputs
from .lr import LRSchedule, make_scheduler
from .sampling import SamplerSpec, generate, with_objective_grid
from .tracking import MetricLogger

__all__ = ["NonFiniteLossError", "Trainer", "TrainerConfig", "fit_parameters"]

LossFn = Callable[..., torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; training stopped before the update."""


@dataclass
class TrainerConfig:
    """Every knob of the loop (``configs/trainer/*.yaml`` mirrors these fields)."""

    max_steps: int = 1000
    batch_size: int = 256  # per process and micro-batch
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0  # None or <= 0: no clipping
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (accelerate autocast)
    lr_schedule: str = "constant"  # "constant" | "cosine" | "linear"
    lr_warmup_steps: int = 0
    lr_min_ratio: float = 0.0
    ema_decays: tuple[float, ...] = (0.999,)
    ema_start_step: int = 0
    ema_warmup: bool = True  # decay_t = min(decay, 1 - (1 + t / inv_gamma) ** -power)
    ema_warmup_power: float = 2 / 3
    ema_warmup_inv_gamma: float = 1.0
    ema_sigma_rels: tuple[float, ...] = ()  # EDM2 power-function EMAs, e.g. (0.05, 0.10)
    ema_snapshot_every: int = 0  # power-EMA snapshots for post-hoc EMA; 0: max_steps // 20
    ema_auto_items: int = 256  # ema=auto: items scored at each checkpoint; 0: at sampling
    ema_auto_draws: int = 1  # ema=auto: noise draws per item
    ema_auto_n: int = 256  # ema=auto: samples per candidate for the metric choice; 0: loss only
    sample_with_ema: bool = True  # sample with the EMA of the first decay
    aux_loss_weight: float = 1.0  # weight of ``model.aux_loss`` (e.g. MoE balance)
    log_every: int = 50
    ckpt_every: int = 0  # 0: only at the end
    keep_last: int = 3
    sample_every: int = 0  # 0: never during training
    sample_n: int = 512
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    progress: bool = True
    tensorboard: bool = False
    cpu: bool = False  # force CPU even if an accelerator is available
    num_threads: int | None = None  # torch intra-op threads (1 is fastest for small models)
    resume: str | None = None  # None | "auto" (latest in run_dir) | path of a checkpoint dir
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ema_decays = tuple(float(d) for d in (self.ema_decays or ()))
        self.ema_sigma_rels = tuple(float(s) for s in (self.ema_sigma_rels or ()))
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(
                f"trainer.mixed_precision={self.mixed_precision!r}; valid choices: no, bf16, fp16"
            )
        for name in ("max_steps", "batch_size", "grad_accum", "ema_auto_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ema_auto_items", "ema_auto_n"):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")


def _seed_for(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:  # FNV-1a over the integers: distinct, stable seeds per (seed, rank, step)
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def _build_accelerator(cfg: TrainerConfig) -> Accelerator:
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", cfg.mixed_precision) != cfg.mixed_precision:
        # one process building trainers of different precisions in turn (tests, notebooks)
        AcceleratorState._reset_state(reset_partial_state=False)
        PartialState._shared_state.pop("_mixed_precision", None)
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)


class Trainer:
    """Train ``model`` with ``objective`` on ``dataset``.

    Args:
        model: network ``forward(x, t, cond)`` (any ``nn.Module``).
        objective: a ``polydiff.core.objective.DiffusionObjective`` (its ``.loss`` and
            ``.denoiser`` are used) or a bare loss callable ``loss(net, x, cond, generator=)``.
        dataset: items ``{"x": ..., <cond>: ...}`` or bare tensors (see ``polydiff.train.data``).
        optimizer: ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.AdamW, lr=1e-3)``).
        config: :class:`TrainerConfig`.
        run_dir: where checkpoints, ``metrics.jsonl`` and samples go (None: nothing written).
        sampler: :class:`SamplerSpec` for periodic samples and :meth:`sample`.
        hooks: the modality's hooks (``polydiff.train.hooks``) for periodic sample files.
        run_config: the resolved config (a plain dict) stored in every checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Any,
        dataset: Any,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        config: TrainerConfig | None = None,
        *,
        run_dir: str | Path | None = None,
        sampler: SamplerSpec | None = None,
        hooks: Any = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg = config or TrainerConfig()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.accelerator = acc = _build_accelerator(cfg)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.objective = objective
        self.dataset = dataset
        self.sampler = with_objective_grid(sampler or SamplerSpec(), objective)
        self.hooks = hooks
        self.run_config = dict(run_config or {})
        self.is_main = acc.is_main_process

        self.model = model  # the unwrapped module (EMA, checkpoints)
        try:
            opt = optimizer(model.parameters())
        except (ValueError, TypeError) as err:  # torch's own checks: "Invalid learning rate: nan"
            raise ConfigError(
                f"trainer.optimizer cannot be built: {err} (expected e.g. lr a finite number > 0); "
                "nothing was trained"
            ) from err
        _check_learning_rates(opt)  # before the LR scheduler scales them
        self.schedule = LRSchedule(
            cfg.lr_schedule, cfg.lr_warmup_steps, cfg.max_steps, cfg.lr_min_ratio
        )
        self.train_model, self.optimizer = acc.prepare(model, opt)
        self.lr_scheduler = make_scheduler(self.optimizer.optimizer, self.schedule)
        self._params = [p for p in model.parameters() if p.requires_grad]
        # accelerate's optimizer wrapper re-probes `import lomo_optim` at every step and its
        # clip_grad_norm_ parses the torch version at every call (~1-3 ms each on CPU); when
        # they have nothing to add (no loss scaler, plain DDP or one process), call torch itself
        self._plain = acc.scaler is None and acc.distributed_type in (
            DistributedType.NO,
            DistributedType.MULTI_CPU,
            DistributedType.MULTI_GPU,
        )
        self._step_optimizer = self.optimizer.optimizer if self._plain else self.optimizer
        self.ema = EMABank(
            model,
            cfg.ema_decays,
            cfg.ema_start_step,
            warmup=cfg.ema_warmup,
            inv_gamma=cfg.ema_warmup_inv_gamma,
            power=cfg.ema_warmup_power,
            sigma_rels=cfg.ema_sigma_rels,
        ).to(acc.device)
        self.ema_snapshots: dict[str, str] = {}  # power-EMA snapshot file -> sha256
        self._heldout: HeldOutLoss | None = None  # ema=auto scorer, built at the first checkpoint
        self.noise_generator = torch.Generator(device=acc.device)

        self.step = 0  # optimizer steps done
        self.data_position = 0  # global micro-batches consumed
        self.last_checkpoint: Path | None = None
        self._loader = None
        self._logger: MetricLogger | None = None
        example = dataset[0]
        self.sample_shape = tuple(split_batch(example)[0].shape)

        if cfg.resume:
            path = (
                latest_checkpoint(self.checkpoint_dir) if cfg.resume == "auto" else Path(cfg.resume)
            )
            if path is not None:
                self.load_checkpoint(path)
            elif cfg.resume != "auto":
                raise CheckpointError(f"trainer.resume={cfg.resume!r}: no checkpoint there")
        if self.step == 0:  # a fresh start: rows and snapshots of an earlier, dead attempt go
            self._rewind_logs(0)

    # ------------------------------------------------------------------ properties
    @property
    def checkpoint_dir(self) -> Path:
        if self.run_dir is None:
            raise ValueError("this trainer has no run_dir: checkpoints need one")
        return self.run_dir / "checkpoints"

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def sampling_model(self) -> nn.Module:
        """The network used for sampling: the first EMA by default, else the raw model."""
        if self.cfg.sample_with_ema and self.ema.keys():
            return self.ema[self.ema.keys()[0]]
        return self.model

    @property
    def snapshot_every(self) -> int:
        """Steps between power-EMA snapshots (0 when no power EMA is tracked)."""
        if not self.cfg.ema_sigma_rels:
            return 0
        return self.cfg.ema_snapshot_every or max(1, self.cfg.max_steps // 20)

    # ------------------------------------------------------------------ the loop
    def _batches(self):
        if self._loader is None:
            order = BatchOrder(
                len(self.dataset),
                self.cfg.batch_size,
                seed=self.cfg.seed,
                shuffle=self.cfg.shuffle,
                rank=self.accelerator.process_index,
                world_size=self.accelerator.num_processes,
                start=self.data_position,
            )
            self._loader = make_loader(
                self.dataset, order, self.cfg.num_workers, pin_memory=self.device.type == "cuda"
            )
        return self._loader

    def _loss(self, x: torch.Tensor, cond: dict | None) -> torch.Tensor:
        fn = getattr(self.objective, "loss", self.objective)
        loss = fn(self.train_model, x, cond, generator=self.noise_generator)
        aux = getattr(self.model, "aux_loss", None)
        if isinstance(aux, torch.Tensor) and self.cfg.aux_loss_weight:
            loss = loss + self.cfg.aux_loss_weight * aux
        return loss

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns detached metrics."""
        acc, cfg = self.accelerator, self.cfg
        if not self.train_model.training:  # .train() walks the whole module tree: only if needed
            self.train_model.train()
        loader = self._batches()
        losses = []
        for micro in range(cfg.grad_accum):
            x, cond = split_batch(next(loader))
            x = x.to(self.device, non_blocking=True)
            if cond is not None:
                cond = {k: v.to(self.device, non_blocking=True) for k, v in cond.items()}
            self.noise_generator.manual_seed(
                _seed_for(cfg.seed, acc.process_index, self.step, micro)
            )
            last = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.train_model):
                loss = self._loss(x, cond)
                acc.backward(loss / cfg.grad_accum if cfg.grad_accum > 1 else loss)
            self.data_position += 1
            losses.append(loss.detach())
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        grad_norm = self._clip_gradients()
        if not bool(torch.isfinite(loss + grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            where = self.last_checkpoint or "none written yet"
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) or gradient norm ({grad_norm.item()}) at step "
                f"{self.step + 1}{self._sigma_range(x.shape[0])}: stopped before the update; "
                f"nothing was saved, the last good checkpoint is {where}"
            )
        self._step_optimizer.step()
        self.lr_scheduler.step()
        self._step_optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(self.model, self.step)
        return {"loss": loss, "grad_norm": grad_norm}

    def _sigma_range(self, batch: int) -> str:
        """`` (batch sigma in [a, b])`` of the step that just ran, by replaying the noise
        generator's first draw (the objective's ``sample_sigma``); empty if not available."""
        draw = getattr(self.objective, "sample_sigma", None)
        if draw is None:
            return ""
        lo, hi = math.inf, -math.inf
        for micro in range(self.cfg.grad_accum):
            gen = torch.Generator(device=self.device).manual_seed(
                _seed_for(self.cfg.seed, self.accelerator.process_index, self.step, micro)
            )
            try:
                sigma = draw(batch, gen, self.device)
            except Exception:  # a custom objective: the message simply leaves the range out
                return ""
            lo, hi = min(lo, float(sigma.min())), max(hi, float(sigma.max()))
        return f" (batch sigma in [{lo:.4g}, {hi:.4g}])"

    def _clip_gradients(self) -> torch.Tensor:
        """Clip to ``clip_grad_norm`` (if set); returns the global gradient norm before clipping."""
        max_norm = self.cfg.clip_grad_norm
        clip = bool(max_norm and max_norm > 0)
        if not self._plain:
            norm = self.accelerator.clip_grad_norm_(self._params, max_norm if clip else math.inf)
            return torch.as_tensor(norm, device=self.device)
        grads = [p.grad for p in self._params if p.grad is not None]
        if not clip:
            return torch.nn.utils.get_total_norm(grads)
        return torch.nn.utils.clip_grad_norm_(self._params, max_norm)

    def fit(self, until: int | None = None) -> dict[str, float]:
        """Train until step ``until`` (default ``max_steps``); returns the last logged metrics.

        On an exception (including :class:`NonFiniteLossError`) nothing is saved, so the last
        checkpoint on disk stays the last good one.
        """
        cfg = self.cfg
        end = min(until if until is not None else cfg.max_steps, cfg.max_steps)
        if self.run_dir is not None and self.is_main and self._logger is None:
            self._logger = MetricLogger(self.run_dir, cfg.tensorboard)
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            disable=not (cfg.progress and self.is_main),
            dynamic_ncols=True,
            desc="train",
        )
        last: dict[str, float] = {}
        window_n, t0 = 0, time.perf_counter()
        try:
            while self.step < end:
                metrics = self.train_step()
                bar.update(1)
                window_n += 1
                if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == end):
                    dt = time.perf_counter() - t0
                    last = {
                        "loss": metrics["loss"].item(),
                        "grad_norm": metrics["grad_norm"].item(),
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "steps_per_sec": window_n / max(dt, 1e-9),
                    }
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                    if self._logger is not None:
                        with self._naming_write_errors("metrics log"):
                            self._logger.log(self.step, last)
                    window_n, t0 = 0, time.perf_counter()
                every = self.snapshot_every
                if self.run_dir is not None and every and self.step % every == 0:
                    self.save_ema_snapshot()
                if self.run_dir is not None and cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save_checkpoint()
                if (
                    self.run_dir is not None
                    and cfg.sample_every
                    and self.step % cfg.sample_every == 0
                ):
                    self.write_samples(self.run_dir / "samples" / f"step_{self.step:08d}")
        finally:
            bar.close()
        if self.run_dir is not None and (
            self.last_checkpoint is None
            or not self.last_checkpoint.name.endswith(f"{self.step:08d}")
        ):
            self.save_checkpoint()
        if self._logger is not None and self.step >= cfg.max_steps:
            self._logger.close()
            self._logger = None
        return last

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: Mapping[str, torch.Tensor] | None = None,
        seed: int = 0,
        model: nn.Module | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """``n`` samples (model space) from the EMA model (or ``model``) with ``self.sampler``."""
        net = model or self.sampling_model()
        was_training = net.training
        net.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        denoiser = self.objective.denoiser(net)
        out = generate(
            denoiser,
            self.sample_shape,
            n,
            self.sampler,
            cond=cond,
            generator=gen,
            batch_size=batch_size,
            device=self.device,
        )
        net.train(was_training)
        return out

    def write_samples(self, out_dir: Path) -> Path | None:
        """Sample ``sample_n`` items with the modality's conditioning; write npz + its files."""
        if not self.is_main:
            return None
        net = self.sampling_model()
        was_training = net.training
        net.eval()
        data, cond = draw(  # the same function as `polydiff sample` (polydiff.train.run)
            self.objective.denoiser(net),
            self.hooks,
            self.sample_shape,
            self.cfg.sample_n,
            self.sampler,
            seed=self.cfg.seed + self.step,
            device=self.device,
        )
        net.train(was_training)
        write_outputs(out_dir, data, cond, self.hooks)
        return out_dir

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        np_state = np.random.get_state()
        tensors = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            tensors["cuda"] = torch.cuda.get_rng_state()
        meta = {
            "python": list(random.getstate()[1]) + [random.getstate()[0]],
            "numpy": {
                "keys": np_state[1].tolist(),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
        }
        return tensors, meta

    @staticmethod
    def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        torch.set_rng_state(tensors["torch"])
        if "cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["cuda"])
        py = meta["python"]
        random.setstate((py[-1], tuple(py[:-1]), None))
        npm = meta["numpy"]
        np.random.set_state(
            (
                "MT19937",
                np.asarray(npm["keys"], dtype=np.uint32),
                npm["pos"],
                npm["has_gauss"],
                npm["cached_gaussian"],
            )
        )

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step_<N>/`` atomically (main process) and prune to ``keep_last``."""
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if self.is_main:
            opt_tensors, opt_meta = flatten_optimizer_state(self.optimizer.state_dict())
            sched = self.lr_scheduler.state_dict()
            sched["lr_lambdas"] = [None] * len(sched.get("lr_lambdas", []))
            rng_tensors, rng_meta = self._rng_state()
            state = {
                "step": self.step,
                "data_position": self.data_position,
                "world_size": acc.num_processes,
                "trainer": asdict(self.cfg),
                "ema_decays": [decay_key(d) for d in self.cfg.ema_decays],
                "ema_sigma_rels": [sigma_rel_key(s) for s in self.cfg.ema_sigma_rels],
                "ema_snapshots": dict(self.ema_snapshots),
                "optimizer": opt_meta,
                "lr_scheduler": sched,
                "rng": rng_meta,
                "config": self.run_config,
                "sample_shape": list(self.sample_shape),
            }
            model_tensors = acc.unwrap_model(self.train_model).state_dict()
            ema_tensors = self.ema.tensors()
            state["ema_auto"] = self.choose_ema(state, model_tensors, ema_tensors)
            with self._naming_write_errors("checkpoint"):
                path = save_checkpoint_files(
                    self.checkpoint_dir,
                    self.step,
                    {
                        "model": model_tensors,
                        "ema": ema_tensors,
                        "optimizer": opt_tensors,
                        "rng": rng_tensors,
                    },
                    state,
                )
                prune_checkpoints(self.checkpoint_dir, self.cfg.keep_last)
        self.last_checkpoint = path or self.checkpoint_dir / f"step_{self.step:08d}"
        acc.wait_for_everyone()
        return path

    def choose_ema(
        self,
        state: Mapping[str, Any],
        model_tensors: Mapping[str, torch.Tensor],
        ema_tensors: Mapping[str, torch.Tensor],
    ) -> dict[str, Any] | None:
        """The ``ema=auto`` record of the checkpoint being written: raw weights, stored EMAs
        and post-hoc power EMAs scored by :class:`~polydiff.train.ema.HeldOutLoss` (None when
        ``ema_auto_items`` is 0)."""
        if not self.cfg.ema_auto_items or non_finite_tensors(model_tensors):
            return None  # (non-finite weights: save_checkpoint_files refuses them, naming why)
        if not self.ema.keys():
            return {"choice": "false", "weights": "model", "criterion": "no EMA", "losses": {}}
        if self._heldout is None:
            scratch = copy.deepcopy(self.model).to(self.device)
            scratch.requires_grad_(False)
            self._heldout = HeldOutLoss(
                scratch,
                self.objective,
                self.dataset,
                items=auto_items(asdict(self.cfg)),
                draws=self.cfg.ema_auto_draws,
                seed=self.cfg.seed,
                batch_size=self.cfg.batch_size,
                device=self.device,
            )
        source = WeightSource(
            state,
            model_tensors,
            ema_tensors,
            self.run_dir / SNAPSHOT_DIR if self.run_dir is not None else None,
            f"step {self.step}",
        )
        return choose_weights(source, self._heldout, criterion=self._heldout.describe())

    @contextlib.contextmanager
    def _naming_write_errors(self, what: str):
        """Turn an OSError while writing (disk full, file too large, read-only) into one line
        naming the step, the file system error and the last good checkpoint."""
        try:
            yield
        except (OSError, SafetensorError) as err:
            code = getattr(err, "errno", None)
            if code is None:  # safetensors reports "I/O error: ... (os error 28)"
                m = re.search(r"os error (\d+)", str(err))
                code = int(m.group(1)) if m else None
            reason = {
                errno.ENOSPC: "the disk is full",
                errno.EFBIG: "a file exceeds the allowed size",
                errno.EROFS: "the file system is read-only",
                errno.EDQUOT: "the disk quota is exceeded",
                errno.EACCES: "permission denied",
            }.get(code, getattr(err, "strerror", None) or str(err))
            where = self.last_checkpoint or "none written yet"
            raise CheckpointError(
                f"cannot write the {what} of step {self.step} under {self.run_dir} ({reason}: "
                f"{getattr(err, 'filename', None) or err}); training stopped; the last good "
                f"checkpoint is {where} (resuming from it drops anything written after it)"
            ) from err

    def save_ema_snapshot(self) -> Path | None:
        """Write the power-function EMAs to ``<run>/ema_snapshots/step_<N>.safetensors``
        (atomically); the next checkpoint records its SHA-256 for post-hoc EMA."""
        if not self.is_main or self.run_dir is None or not self.cfg.ema_sigma_rels:
            return None
        keys = [sigma_rel_key(s) for s in self.cfg.ema_sigma_rels]
        tensors = {
            k: v.detach().cpu().contiguous().clone() for k, v in self.ema.tensors(keys).items()
        }
        path = self.run_dir / SNAPSHOT_DIR / f"step_{self.step:08d}.safetensors"
        with self._naming_write_errors("power-EMA snapshot"), atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "polydiff"})  # one key: same bytes
        self.ema_snapshots[path.name] = sha256_file(path)
        return path

    def _rewind_logs(self, step: int) -> None:
        """Make the run's files agree with a checkpoint of ``step``: drop ``metrics.jsonl`` rows
        past it (and unreadable or repeated rows), delete power-EMA snapshots it does not list."""
        if self.run_dir is None or not self.is_main:
            return
        log = self.run_dir / "metrics.jsonl"
        if log.is_file():
            lines = log.read_text().splitlines()
            kept, last = [], -1
            for line in lines:
                try:
                    row_step = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill, or not a metrics row
                if last < row_step <= step:
                    kept.append(line)
                    last = row_step
            if len(kept) != len(lines):
                atomic_write_text(log, "".join(line + "\n" for line in kept))
        snap_dir = self.run_dir / SNAPSHOT_DIR
        if snap_dir.is_dir():
            for path in snap_dir.glob("step_*.safetensors"):
                m = re.fullmatch(r"step_(\d+)\.safetensors", path.name)
                if m and int(m.group(1)) > step and path.name not in self.ema_snapshots:
                    path.unlink()

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote (exact resume)."""
        tensors, state = load_checkpoint_files(path)
        missing = [
            k for k in ("optimizer", "lr_scheduler", "rng", "data_position") if k not in state
        ]
        if missing:
            raise CheckpointError(f"{Path(path) / 'state.json'} lacks the keys {missing}")
        try:
            self.model.load_state_dict(tensors["model"])
        except RuntimeError as err:
            raise CheckpointError(
                f"{path}/model.safetensors does not fit this model: {err}"
            ) from err
        if self.ema.keys():
            try:
                self.ema.load_tensors(tensors["ema"])
            except KeyError as err:
                raise CheckpointError(f"{path}/ema.safetensors: {err.args[0]}") from err
        self.optimizer.load_state_dict(
            unflatten_optimizer_state(
                {k: v.to(self.device) for k, v in tensors["optimizer"].items()}, state["optimizer"]
            )
        )
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.is_main:  # other ranks keep their own streams (only rank 0's is stored)
            self._set_rng_state(tensors["rng"], state["rng"])
        self.step = int(state["step"])
        self.data_position = int(state["data_position"])
        self.ema_snapshots = dict(state.get("ema_snapshots") or {})
        self._loader = None  # rebuilt from data_position
        self.last_checkpoint = Path(path)
        self._rewind_logs(self.step)
        if self.is_main and self.run_dir is not None and self.checkpoint_dir.is_dir():
            # a kill inside a prune or a re-save leaves trash that a finished run never
            # prunes again: clean it (and hold keep_last) now
            prune_checkpoints(self.checkpoint_dir, self.cfg.keep_last)


def _check_learning_rates(optimizer: torch.optim.Optimizer) -> None:
    """Every param group's ``lr`` must be finite, in [0, float32 max] (0 freezes a group)."""
    top = torch.finfo(torch.float32).max
    for i, group in enumerate(optimizer.param_groups):
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor):
            lr = float(lr)
        if not isinstance(lr, (int, float)) or not (0 <= lr <= top and math.isfinite(lr)):
            raise ConfigError(
                f"trainer.optimizer.lr={lr!r} (param group {i}) must be a finite number in "
                f"[0, {top:.3g}]; nothing was trained"
            )


def fit_parameters(
    model: nn.Module,
    loss: Any,
    dataset: Any,
    *,
    steps: int,
    lr: float,
    batch_size: int = 16,
    seed: int = 0,
    weight_decay: float = 0.0,
    clip_grad_norm: float | None = 1.0,
    lr_warmup_steps: int = 0,
    ema: float | None = None,
) -> Trainer:
    """Fine-tune the parameters of ``model`` that require grad (AdamW, CPU, no files written).

    The one in-process training job of the engine, used by adaptation methods whose settings
    come from their own config group (``configs/adapt/``: LoRA, DreamBooth, textual inversion,
    IP-Adapter): it builds the ``TrainerConfig`` here so that no package outside
    ``polydiff.train`` does. ``ema`` keeps one EMA of that decay (``trainer.sampling_model()``).
    Returns the fitted ``Trainer`` (``.fit()`` already called; ``.last_metrics`` holds the last
    logged metrics).
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"fit_parameters: {type(model).__name__} has no trainable parameter")
    cfg = TrainerConfig(
        max_steps=steps,
        batch_size=batch_size,
        ema_decays=(ema,) if ema else (),
        progress=False,
        log_every=steps,
        cpu=True,
        seed=seed,
        clip_grad_norm=clip_grad_norm,
        lr_warmup_steps=lr_warmup_steps,
    )
    optimizer = functools.partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay)
    trainer = Trainer(model, loss, dataset, optimizer, cfg)
    trainer.last_metrics = trainer.fit()
    return trainer
