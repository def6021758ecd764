"""LoRA adapters on polydiff networks through ``peft`` (Hu et al. 2021, "LoRA").

``W x  ->  W x + (alpha / r) B A x`` with ``A`` random and ``B`` zero at init, so an injected
network computes exactly what it did before. Targets are our module names: the attention
projections ``to_q``, ``to_k``, ``to_v``, ``to_out`` of :class:`~polydiff.nn.attention.Attention`
(self- and cross-attention in every U-Net, video U-Net and transformer), and optionally the
residual-block convolutions ``in_conv`` / ``out_conv``.

    add_lora(net, rank=8)                 # inject; only the adapter stays trainable
    save_lora(net, "style.safetensors")   # the adapter alone (+ its config in the metadata)
    load_lora(fresh_net, "style.safetensors")
    merge_lora(net); unmerge_lora(net)    # fold into / take out of the base weights
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "ATTENTION_TARGETS",
    "CONV_TARGETS",
    "add_lora",
    "load_lora",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "save_lora",
    "unmerge_lora",
]

ATTENTION_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out")
CONV_TARGETS: tuple[str, ...] = ("in_conv", "out_conv")


def _target_regex(targets: Sequence[str]) -> str:
    names = "|".join(sorted(set(targets)))
    return rf"(.*\.)?({names})$"


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    targets: Sequence[str] = ATTENTION_TARGETS,
    include_convs: bool = False,
    dropout: float = 0.0,
    adapter_name: str = "default",
    freeze_base: bool = True,
) -> nn.Module:
    """Inject LoRA adapters (in place) into every module whose name ends in one of ``targets``
    (plus :data:`CONV_TARGETS` when ``include_convs``); returns ``model``.

    ``alpha`` defaults to ``rank`` (scale 1). With ``freeze_base`` only adapter weights train.
    """
    from peft import LoraConfig, inject_adapter_in_model

    names = list(targets) + (list(CONV_TARGETS) if include_convs else [])
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if not present & set(names):
        raise ValueError(f"add_lora: no module of {type(model).__name__} is named any of {names}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        target_modules=_target_regex(names),
        lora_dropout=dropout,
        init_lora_weights=True,  # A ~ Kaiming-uniform, B = 0
    )
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    model._polydiff_lora = {  # what save_lora writes next to the weights
        "rank": rank,
        "alpha": config.lora_alpha,
        "targets": names,
        "dropout": dropout,
        "adapter_name": adapter_name,
    }
    if not freeze_base:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (``lora_A`` / ``lora_B``), e.g. for the optimizer."""
    return [p for n, p in model.named_parameters() if "lora_" in n]


def lora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter weights alone, keyed without the adapter name (peft's convention)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=adapter_name)


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (``W += scale * B A``): no inference overhead."""
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("merge_lora: the model has no LoRA adapters (call add_lora first)")
    for layer in layers:
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora` (``W -= scale * B A``)."""
    for layer in _lora_layers(model):
        layer.unmerge()


def save_lora(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write the adapter weights alone to a safetensors file (atomically), with the LoRA config
    (rank, alpha, targets) in its metadata so :func:`load_lora` can re-inject it."""
    from safetensors.torch import save_file

    config = getattr(model, "_polydiff_lora", None)
    if config is None:
        raise ValueError("save_lora: the model has no adapters injected by add_lora")
    state = {
        k: v.detach().cpu().contiguous() for k, v in lora_state_dict(model, adapter_name).items()
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file(state, str(tmp), metadata={"polydiff_lora": json.dumps(config)})
    os.replace(tmp, target)
    return target


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an adapter file written by :func:`save_lora` into ``model`` (injecting the adapter
    first if the model has none); returns ``model``. Raises if keys do not match the model."""
    from peft import set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"LoRA adapter file not found: {source}")
    with safe_open(str(source), "pt") as f:
        meta = f.metadata() or {}
    if "polydiff_lora" not in meta:
        raise ValueError(f"{source} is not a polydiff LoRA file (no 'polydiff_lora' metadata)")
    config = json.loads(meta["polydiff_lora"])
    if not _lora_layers(model):
        add_lora(
            model,
            rank=config["rank"],
            alpha=config["alpha"],
            targets=config["targets"],
            dropout=config["dropout"],
            adapter_name=config["adapter_name"],
        )
    state = load_file(str(source))
    result = set_peft_model_state_dict(model, state, adapter_name=config["adapter_name"])
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
    if unexpected or missing:
        raise ValueError(
            f"LoRA file {source} does not fit {type(model).__name__}: "
            f"unexpected {unexpected[:5]}, missing {missing[:5]}"
        )
    return model
