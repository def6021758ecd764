"""Own data in one line (issue 15): the README's own-data section followed verbatim on a generated
folder of 4 classes of 1-channel images, and the describe / load / evaluate pieces behind it."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from polydiff.image.own_data import describe_caption_folder, describe_image_folder, describe_npz
from polydiff.train.config import ConfigError, compose
from polydiff.train.run import instantiate
from polydiff_apps.cli import main

README = Path(__file__).resolve().parents[2] / "packages" / "image" / "README.md"
# appended to the README's commands so that the test runs in seconds (the commands stay verbatim)
QUICK = {
    "train": ["model.size=tiny-c16", "trainer=tiny", "trainer.batch_size=16", "trainer.max_steps=4",
              "data.hooks.feature_steps=10"],
    "sample": ["steps=2", "n=8"],
    "evaluate": ["steps=2", "n=16"],
    "show": [],
}  # fmt: skip


def make_folder(root: Path, classes: int = 4, per_class: int = 12, size: int = 16) -> Path:
    """``root/class_<k>/<i>.png``: greyscale bars whose row encodes the class."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 40, (size, size))
            a[2 + 3 * k : 5 + 3 * k, 2 : size - 2] = 255
            Image.fromarray(a.astype(np.uint8), "L").save(root / f"class_{k}" / f"{i:03d}.png")
    return root


def readme_commands() -> list[list[str]]:
    text = README.read_text()
    section = text.split("## Train on your own images", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_own_data_section_verbatim(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert [c[:2] for c in commands] == [
        ["polydiff", "train"], ["polydiff", "sample"], ["polydiff", "evaluate"],
        ["polydiff", "show"],
    ]  # fmt: skip
    folder = commands[0][2:]
    root = next(a.split("=", 1)[1] for a in folder if a.startswith("data.root="))
    make_folder(tmp_path / root)
    for argv in commands:
        assert main([*argv[1:], *QUICK[argv[1]]]) == 0, argv
    (run,) = [p.parent for p in (tmp_path / "runs").rglob("config.yaml")]
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.data.num_classes == 4 and cfg.data.channels == 1 and cfg.data.image_size == 16
    assert cfg.model.num_classes == 4 and cfg.model.channels == 1  # the model followed
    assert cfg.data.info.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert cfg.data.conditioning == "class" and cfg.data.captioned is False
    assert "uint8" in cfg.data.normalisation
    (ev,) = list((run / "eval").glob("*.json"))
    result = json.loads(ev.read_text())
    assert result["reference"]["path"] == str((tmp_path / root).resolve())
    assert result["reference"]["n"] == 48 and result["reference"]["classes"] == 4
    assert "trained on the reference's 4 classes" in result["features"]
    assert {"fid", "precision", "recall", "class_accuracy"} <= set(result["metrics"])
    assert "class_4" not in capsys.readouterr().out


def test_mismatched_overrides_name_both_values_before_a_run_exists(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs")
    for bad, values in (("data.channels=3", ("3", "1")), ("data.num_classes=10", ("10", "4"))):
        argv = ["train", "data=image_folder", f"data.root={root}", bad, f"runs_root={tmp_path}/r"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert all(v in err for v in values) and str(root) in err, err
    assert not (tmp_path / "r").exists()
    assert main(["train", "data=image_folder", f"runs_root={tmp_path}/r"]) == 2
    assert "data.root" in capsys.readouterr().err


def test_describe_folder_variants(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 24, 3), 9 * i, np.uint8)).save(flat / f"{i}.jpg")
    facts = describe_image_folder(flat)
    assert facts["num_classes"] is None and facts["conditioning"] is None
    assert facts["channels"] == 3 and facts["image_size"] == 20  # the smallest side
    assert describe_image_folder(flat, image_size=8)["image_size"] == 8  # resizing is allowed
    root = make_folder(tmp_path / "c", classes=2, per_class=2)
    assert describe_image_folder(root, num_classes=None)["conditioning"] is None
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "loose.png")
    with pytest.raises(ValueError, match="mixes class sub-folders"):
        describe_image_folder(root)
    (flat / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        describe_image_folder(flat)


def test_npz_facts_and_normalisation(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (12, 8, 8, 1)).astype(np.uint8)
    np.savez(tmp_path / "u8.npz", images=x, labels=np.arange(12) % 3)
    facts = describe_npz(tmp_path / "u8.npz")
    assert (facts["channels"], facts["image_size"], facts["num_classes"]) == (1, 8, 3)
    assert facts["normalisation"].startswith("uint8")
    np.savez(tmp_path / "f.npz", x=np.random.default_rng(0).random((5, 3, 8, 8)))
    facts = describe_npz(tmp_path / "f.npz")
    assert (
        facts["channels"] == 3
        and facts["num_classes"] is None
        and "[0, 1]" in facts["normalisation"]
    )
    np.savez(tmp_path / "gap.npz", images=x, labels=np.where(np.arange(12) % 2, 2, 0))
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        describe_npz(tmp_path / "gap.npz")
    cfg = compose(["data=image_npz", f"data.path={tmp_path / 'u8.npz'}"])
    ds = instantiate(cfg.data.dataset, "data.dataset")
    assert ds[0]["x"].shape == (1, 8, 8) and int(ds.tensors["class"].max()) == 2
    assert cfg.model.num_classes == 3
    with pytest.raises(ConfigError, match="data.num_classes=5"):
        compose(["data=image_npz", f"data.path={tmp_path / 'u8.npz'}", "data.num_classes=5"])


def test_captions_folder(tmp_path):
    root = tmp_path / "cap"
    root.mkdir()
    lines = []
    for i in range(4):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "caption": f"shade {i}"}))
    (root / "captions.jsonl").write_text("\n".join(lines))
    facts = describe_caption_folder(root, encoder="hashed", text_dim=32)
    assert facts["captioned"] is True and facts["text_dim"] == 32 and facts["channels"] == 1
    over = ["data=image_captions", f"data.root={root}", "data.encoder=hashed", "data.text_dim=32"]
    cfg = compose(over)
    assert cfg.model.context_dim == 32 and cfg.data.captions_file.endswith("captions.jsonl")
    ds = instantiate(cfg.data.dataset, "data.dataset")
    assert ds[0]["text"].shape[-1] == 32 and ds[0]["x"].shape == (1, 8, 8)
    hooks = instantiate(cfg.data.hooks, "data.hooks")
    cond = hooks.sample_cond(3, torch.Generator().manual_seed(0))
    assert cond["text"].shape[0] == 3 and set(hooks._prompts) <= {f"shade {i}" for i in range(4)}


@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("own")
    root = make_folder(tmp / "imgs")
    run = tmp / "run"
    argv = ["train", "data=image_folder", f"data.root={root}", f"run_dir={run}", *QUICK["train"]]
    assert main(argv) == 0
    return run


def test_evaluate_reference_override_and_images(own_run, tmp_path, capsys):
    other = make_folder(tmp_path / "other", classes=2, per_class=6)
    argv = ["evaluate", f"run={own_run}", "steps=2", "n=8", f"evaluate.reference={other}",
            "evaluate.save_images=true", f"out={tmp_path / 'e.json'}"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f'"path": "{other}"' in out and "2 classes" in out  # reference and features printed
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["reference"]["n"] == 12 and "class_accuracy" in result["metrics"]
    assert len(list((tmp_path / "e" / "images").glob("*.png"))) == 8
    assert main([*argv[:-1], f"out={tmp_path / 'e.json'}"]) == 2  # never overwritten
