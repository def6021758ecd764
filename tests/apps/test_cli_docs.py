"""Every example of the `polydiff` docstring runs as written (plus settings that make it quick),
and `polydiff edit` / `adapt` work on any image run with settings from configs/edit, configs/adapt.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import polydiff_apps.cli as cli
from polydiff_apps.cli import main

# appended to each example so that it runs in seconds (later values replace the example's)
QUICK = {
    "train": ["model=mlp_tiny", "trainer=tiny", "trainer.max_steps=4", "trainer.batch_size=16"],
    "sample": ["steps=2", "n=8"],
    "evaluate": ["steps=2", "n=16"],
    "edit": ["edit.n=2", "edit.steps=2"],
    "adapt": ["adapt.steps=2", "adapt.n_images=2", "adapt.batch_size=4",
              "adapt.sample_steps=2", "adapt.n_samples=2", "adapt.init_from=null"],
    "show": [],
}  # fmt: skip
IMAGE_QUICK = ["model.size=tiny", "trainer=tiny", "trainer.max_steps=2", "trainer.batch_size=16"]


def examples() -> list[list[str]]:
    lines = [ln.strip() for ln in cli.__doc__.splitlines() if ln.startswith("    polydiff ")]
    return [shlex.split(ln.split("#", 1)[0]) for ln in lines if "[" not in ln]


@pytest.mark.slow
def test_docstring_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "my_images"
    for k in range(2):
        (folder / f"c{k}").mkdir(parents=True)
        for i in range(8):
            img = np.full((8, 8), 40 + 150 * k, np.uint8)
            Image.fromarray(img, "L").save(folder / f"c{k}" / f"{i}.png")
    image_run = tmp_path / "image_run"
    assert (
        main(["train", "experiment=image/digits_cond", *IMAGE_QUICK, f"run_dir={image_run}"]) == 0
    )
    ran = set()
    for argv in examples():
        command = argv[1]
        args = []
        for a in argv[2:]:
            if a.startswith("run=") and "<" in a:  # a placeholder: the runs made above
                a = f"run={image_run}" if command in ("edit", "adapt") else "run=latest:toy/gmm"
            args.append(a)
        extra = QUICK[command]
        if command == "train" and any(a.startswith("data=image_folder") for a in args):
            extra = ["model.size=tiny", *extra[1:]]
        assert main([command, *args, *extra]) == 0, argv
        ran.add(command)
    assert ran == {"train", "sample", "evaluate", "edit", "adapt", "show"}
    (sdedit,) = list((image_run / "edits").glob("sdedit-*/edit.json"))
    assert json.loads(sdedit.read_text())["edit"]["strength"] == 0.5
    (inpaint,) = list((image_run / "edits").glob("inpaint-*/edit.json"))
    assert json.loads(inpaint.read_text())["known_max_abs_diff"] == 0.0
    (adapted,) = list((image_run / "adapt").glob("textual_inversion-*"))
    assert (adapted / "token.safetensors").is_file()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("img") / "run"
    assert main(["train", "experiment=image/digits_cond", *IMAGE_QUICK, f"run_dir={run}"]) == 0
    return run


def test_edit_defaults_and_groups_on_a_plain_run(image_run, capsys):
    """A run trained without any edit node: sdedit by default, edit=<task> chooses, settings
    distinct -> directories distinct; an unknown choice names the valid ones."""
    assert main(["edit", f"run={image_run}", *QUICK["edit"]]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["edit"]["task"] == "sdedit" and "/edits/sdedit-" in info["out"]
    assert main(["edit", f"run={image_run}", "edit=outpaint", *QUICK["edit"]]) == 0
    assert json.loads(capsys.readouterr().out)["edit"]["task"] == "outpaint"
    assert main(["edit", f"run={image_run}", "edit.strength=0.3", *QUICK["edit"]]) == 0
    assert len(list((image_run / "edits").iterdir())) == 3
    assert main(["edit", f"run={image_run}", "edit=inpaintt"]) == 2
    assert "inpaint" in capsys.readouterr().err
