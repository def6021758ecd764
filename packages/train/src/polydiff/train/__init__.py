"""polydiff.train: the training engine on HF accelerate.

``Trainer`` (DDP / FSDP / DeepSpeed through accelerate, mixed precision, gradient accumulation,
clipping, LR warmup + schedules, multi-decay EMA), atomic safetensors checkpoints with exact
resume, JSONL metrics, and the hydra glue that builds a run from ``configs/``.
"""

from .checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_tensors
from .data import BatchOrder, TensorDictDataset, split_batch
from .ema import EMABank
from .lr import LRSchedule
from .sampling import SamplerSpec, generate
from .trainer import NonFiniteLossError, Trainer, TrainerConfig, fit_parameters

__all__ = [
    "BatchOrder",
    "CheckpointError",
    "EMABank",
    "LRSchedule",
    "NonFiniteLossError",
    "SamplerSpec",
    "TensorDictDataset",
    "Trainer",
    "TrainerConfig",
    "fit_parameters",
    "generate",
    "latest_checkpoint",
    "list_checkpoints",
    "load_tensors",
    "split_batch",
]
