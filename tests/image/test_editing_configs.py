"""The editing configs (configs/experiment/image/edit_*.yaml) and ``editing.edit_run``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from polydiff.core.schedules import karras_sigmas
from polydiff.core.toy import GaussianMixture
from polydiff.image.adaptation import AdaptConfig, adapt_run
from polydiff.image.editing import EditConfig, apply_edit, edit_run
from polydiff.train.config import compose, find_config_dir
from polydiff.train.run import instantiate

CONFIGS = find_config_dir(Path(__file__).resolve().parent)
EDIT_EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment" / "image").glob("edit_*.yaml"))


@pytest.mark.parametrize("name", EDIT_EXPERIMENTS)
def test_edit_node_instantiates(name: str) -> None:
    cfg = compose([f"experiment=image/{name}"], CONFIGS)
    if name == "edit_adapt":
        job = instantiate(cfg.adapt, "adapt")
        assert isinstance(job, AdaptConfig) and job.method == "lora" and job.token == 9
    else:
        job = instantiate(cfg.edit, "edit")
        assert isinstance(job, EditConfig) and job.task == name.removeprefix("edit_")
    assert job.guidance_scale == cfg.guidance.scale


def test_edit_config_names_bad_values() -> None:
    with pytest.raises(ValueError, match="edit.task"):
        EditConfig(task="colorize")
    with pytest.raises(ValueError, match="edit.method"):
        EditConfig(task="inversion", method="repaint")
    with pytest.raises(ValueError, match="strength"):
        EditConfig(task="sdedit", strength=1.5)
    with pytest.raises(ValueError, match="not both"):
        EditConfig(task="sdedit", target_class=1, class_shift=1)
    with pytest.raises(ValueError, match="adapt.method"):
        AdaptConfig(method="hypernetwork")
    with pytest.raises(ValueError, match="adapt.steps"):
        AdaptConfig(steps=0)


def _flat_mixture() -> GaussianMixture:
    # two classes of 4x4 images: all +0.5 or all -0.5
    return GaussianMixture(torch.tensor([[0.5] * 16, [-0.5] * 16]), 0.05)


def _class_denoiser(x, sigma, cond=None):
    """Exact denoiser of the class's component (cond["class"] in {0, 1})."""
    g = _flat_mixture()
    flat = x.reshape(len(x), -1)
    d = g.denoiser(flat, sigma)  # unconditional
    if cond is not None and "class" in cond:
        mean = torch.where(cond["class"][:, None] == 0, 0.5, -0.5).to(x)
        var, s2 = 0.05**2, sigma.to(x)[:, None] ** 2
        d = (var * flat + s2 * mean) / (var + s2)
    return d.reshape(x.shape)


def test_apply_edit_tasks_on_an_exact_model() -> None:
    x = torch.full((4, 1, 4, 4), 0.5)
    labels = torch.zeros(4, dtype=torch.long)
    sig = karras_sigmas(12, 0.01, 10.0)
    inp = apply_edit(
        EditConfig(task="inpaint", method="replacement", mask_box=(2, 0, 2, 4)),
        _class_denoiser, x, sig, labels, 2,
    )  # fmt: skip
    assert torch.equal(inp["edited"][..., :2, :], x[..., :2, :])
    assert (inp["edited"][..., 2:, :] - 0.5).abs().max() < 0.2  # filled with the class's value
    sd = apply_edit(EditConfig(task="sdedit", strength=1.0, class_shift=1), _class_denoiser, x,
                    sig, labels, 2)  # fmt: skip
    assert sd["target_class"].tolist() == [1] * 4 and (sd["edited"] + 0.5).abs().max() < 0.2
    inv = apply_edit(EditConfig(task="inversion", method="ddpm"), _class_denoiser, x, sig, labels)
    assert (inv["edited"] - x).abs().max() < 1e-4  # same class: exact reconstruction
    out = apply_edit(EditConfig(task="outpaint", pad=1), _class_denoiser, x, sig, labels)
    assert out["edited"].shape == x.shape and out["mask"][0, 0].sum() == 4
    assert (out["edited"] - 0.5).abs().max() < 0.2


@pytest.mark.slow
def test_edit_run_on_a_tiny_trained_run(tmp_path) -> None:
    from polydiff.train.run import train

    run = train(
        [
            "experiment=image/edit_inpaint", "trainer.max_steps=2", "trainer.batch_size=4",
            "trainer.ckpt_every=0", f"runs_root={tmp_path}", "model.size=tiny-c16",
        ],
        config_dir=CONFIGS,
    )  # fmt: skip
    info = edit_run(str(run), ["edit.n=3", "edit.steps=3", "edit.resample=1"])
    out = Path(info["out"])
    assert {p.name for p in out.iterdir()} == {"edit.png", "edit.json", "edit.npz"}
    assert info["known_max_abs_diff"] == 0.0  # RePaint keeps the known half exactly
    with np.load(out / "edit.npz") as f:
        assert f["edited"].shape == (3, 1, 16, 16) and f["mask"].shape == (3, 1, 16, 16)
    saved = json.loads((out / "edit.json").read_text())
    assert saved["edit"]["task"] == "inpaint" and saved["edit"]["n"] == 3
    # another task on the same run, from an explicit config and an .npz of images
    np.savez(tmp_path / "imgs.npz", images=np.zeros((2, 1, 16, 16), np.float32),
             labels=np.array([3, 4]))  # fmt: skip
    sd = edit_run(str(run), out=str(tmp_path / "sd"), edit={
        "task": "sdedit", "strength": 0.5, "class_shift": 1, "n": 2, "steps": 3,
        "images": str(tmp_path / "imgs.npz"),
    })  # fmt: skip
    with np.load(Path(sd["out"]) / "edit.npz") as f:
        assert f["target_class"].tolist() == [4, 5]


@pytest.mark.slow
def test_adapt_run_writes_the_adapter_alone(tmp_path) -> None:
    from polydiff.train.run import train

    run = train(
        [
            "experiment=image/edit_adapt", "trainer.max_steps=2", "trainer.batch_size=4",
            "trainer.ckpt_every=0", f"runs_root={tmp_path}",
        ],
        config_dir=CONFIGS,
    )  # fmt: skip
    small = ["adapt.steps=2", "adapt.batch_size=4", "adapt.n_prior=8", "adapt.sample_steps=2",
             "adapt.n_samples=2"]  # fmt: skip
    info = adapt_run(str(run), small)
    out = Path(info["out"])
    assert {p.name for p in out.iterdir()} == {"lora.safetensors", "samples.png", "adapt.json"}
    assert info["n_prior"] == 8 and info["method"] == "lora"
    from safetensors.torch import load_file

    assert all("lora_" in k for k in load_file(str(out / "lora.safetensors")))
    ti = adapt_run(str(run), [*small, "adapt.method=textual_inversion"], out=str(tmp_path / "ti"))
    assert isinstance(ti["init_from"], int) and ti["init_from"] != 9
    assert "token.safetensors" in ti["files"]
