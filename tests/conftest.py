"""Shared pytest setup: deterministic, single-threaded torch per worker, offline HF."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)
