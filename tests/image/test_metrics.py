"""Image metrics: the cached feature network, FID sanity, accuracies, Inception / CLIP paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from polydiff.image.data import ATTRIBUTES, DigitsDataset, ImageFileError, ShapesDataset
from polydiff.image.metrics import (
    CLIPModel,
    FeatureNet,
    ImageEvaluator,
    InceptionFeatures,
    attribute_accuracy,
    fid_from_features,
    folder_fid,
    load_feature_net,
    load_folder,
)


@pytest.fixture(scope="module")
def digits_net(tmp_path_factory):
    """The default digits feature net: shipped in the package's assets (trained if missing)."""
    cache = tmp_path_factory.mktemp("cache")
    return load_feature_net("digits", cache), cache


def test_feature_net_is_cached_by_hash(tmp_path):
    net = load_feature_net("digits", tmp_path, steps=4, batch_size=16)
    (path,) = list(tmp_path.glob("featnet-digits-*.safetensors"))
    mtime = path.stat().st_mtime_ns
    again = load_feature_net("digits", tmp_path, steps=4, batch_size=16)
    assert path.stat().st_mtime_ns == mtime  # loaded, not retrained
    x = DigitsDataset(16, "test").images[:8]
    assert torch.allclose(again.features(x), net.features(x), atol=1e-6)
    assert again.input_size == 16 and again.head_sizes == {"class": 10}


def test_fid_sanity_and_class_accuracy(digits_net):
    net, cache = digits_net
    ev = ImageEvaluator("digits", cache, net=net)
    train = DigitsDataset(16, "train")
    real = train.images[:400]
    noise = torch.rand_like(real) * 2 - 1
    fid_real, fid_noise = ev.fid(real), ev.fid(noise)
    assert fid_real < 0.1 * fid_noise, (fid_real, fid_noise)
    pr_real, pr_noise = ev.precision_recall(real), ev.precision_recall(noise)
    assert pr_real["precision"] > 0.6 and pr_noise["precision"] < 0.2
    test = DigitsDataset(16, "test")
    acc = ev.class_accuracy(test.images, test.labels)
    assert acc > 0.97  # held-out digits (measured 0.994)
    assert ev.class_accuracy(test.images, (test.labels + 1) % 10) < 0.05
    # grey digits in an RGB evaluator input and 32x32 inputs are adapted
    assert ev.features(test.images[:4].expand(-1, 3, -1, -1)).shape == (4, 128)
    full = ev.evaluate(test.images[:100], labels=test.labels[:100])
    assert set(full) == {"fid", "precision", "recall", "class_accuracy"}
    assert list(cache.glob("reffeat-digits-*.safetensors"))  # reference features cached


def test_attribute_accuracy_structure():
    torch.manual_seed(0)
    net = FeatureNet(3, {k: len(v) for k, v in ATTRIBUTES.items()}, input_size=32).eval()
    ds = ShapesDataset(n=20, seed=1)
    ev = ImageEvaluator("shapes", net=net, reference=ShapesDataset(n=20, seed=2).images)
    acc = ev.attribute_accuracy(ds.images, ds.captions)
    assert set(acc) == {*ATTRIBUTES, "all"}
    assert all(0 <= v <= 1 for v in acc.values()) and acc["all"] <= min(acc[k] for k in ATTRIBUTES)
    pred = ev.predict(ds.images)
    manual = float(
        (pred["colour"] == torch.tensor([s.labels()["colour"] for s in ds.specs])).float().mean()
    )
    assert acc["colour"] == pytest.approx(manual)
    with pytest.raises(ValueError, match="not a shapes caption"):
        ev.attribute_accuracy(ds.images[:1], ["a purple hexagon"])


def test_attribute_accuracy_real_high_noise_at_chance(tmp_path):
    """The shipped shapes feature net reads prompts off real images; noise scores at chance."""
    net = load_feature_net("shapes", tmp_path)  # from the package assets: nothing is trained
    assert not list(tmp_path.glob("featnet-*"))
    ds = ShapesDataset(n=600, seed=30_000)  # held out; 5 of each of the 120 combinations
    real = attribute_accuracy(ds.images, ds.captions, net=net)
    assert set(real) == {*ATTRIBUTES, "all"}
    assert min(real["colour"], real["size"], real["position"]) > 0.99  # measured 1.0
    assert real["shape"] > 0.95 and real["all"] > 0.95  # measured 0.975
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(ds.images.shape, generator=g) * 2 - 1
    chance = attribute_accuracy(noise, ds.specs, net=net)
    for k, values in ATTRIBUTES.items():  # balanced prompts: chance is 1 / #values
        assert abs(chance[k] - 1 / len(values)) < 0.06, (k, chance[k])
    assert chance["all"] < 0.03  # 1/120 at chance
    # a wrong prompt is caught: every colour shifted by one
    labels = {k: torch.tensor([s.labels()[k] for s in ds.specs]) for k in ATTRIBUTES}
    wrong = {"colour": (labels["colour"] + 1) % len(ATTRIBUTES["colour"])}
    assert attribute_accuracy(ds.images, wrong, net=net) == {"colour": 0.0, "all": 0.0}
    subset = attribute_accuracy(ds.images, {"position": labels["position"]}, net=net)
    assert subset["position"] == real["position"] == subset["all"]
    with pytest.raises(ValueError, match=r"'size' labels must lie in \[0, 2\)"):
        attribute_accuracy(ds.images, {"size": labels["size"] + 1}, net=net)
    with pytest.raises(ValueError, match="599 captions / specs for 600 images"):
        attribute_accuracy(ds.images, ds.captions[:-1], net=net)
    digits = FeatureNet(1, {"class": 10})
    with pytest.raises(ValueError, match="no head for"):
        attribute_accuracy(ds.images[:2], ds.captions[:2], net=digits)


def test_folders_and_fid_helper(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(6):
            arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / name / f"{i}.png")
    x = load_folder(tmp_path / "a")
    assert x.shape == (6, 3, 8, 8)

    def feats(images):  # mean colour per channel as a 3-d feature
        return images.mean((2, 3))

    assert folder_fid(tmp_path / "a", tmp_path / "a", feats) == pytest.approx(0.0, abs=1e-9)
    assert folder_fid(tmp_path / "a", x + 0.5, feats) == pytest.approx(0.75, rel=1e-6)
    (tmp_path / "a" / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageFileError, match=r"bad\.png"):
        load_folder(tmp_path / "a")
    assert load_folder(tmp_path / "a", on_error="skip").shape == (6, 3, 8, 8)
    a = torch.randn(50, 4, dtype=torch.float64)
    assert fid_from_features(a, a + 1.0) == pytest.approx(4.0, rel=1e-6)


def test_inception_features_from_local_weights(tmp_path):
    """Inception features and Inception-FID of two folders from user weights (.pth and
    .safetensors)."""
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    # calibrate the BatchNorm statistics on one batch: with default running stats a random
    # Inception's pool features are ~1e-8 and every image looks alike
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        net.train()(torch.rand(2, 3, 299, 299) * 2 - 1)
    net.eval()
    path, st = tmp_path / "inception.pth", tmp_path / "inception.safetensors"
    torch.save(net.state_dict(), path)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(st))
    rng = np.random.default_rng(0)
    for name in ("real", "fake"):
        (tmp_path / name).mkdir()
        for i in range(2):
            arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            if name == "fake":
                arr = arr // 4  # darker images: a different distribution
            Image.fromarray(arr).save(tmp_path / name / f"{i}.png")
    real, fake = load_folder(tmp_path / "real"), load_folder(tmp_path / "fake")
    ref = net.eval()
    ref.fc = torch.nn.Identity()
    with torch.no_grad():
        f_real, f_fake = (
            ref(F.interpolate(t, size=(299, 299), mode="bilinear")) for t in (real, fake)
        )
    f = InceptionFeatures(path)(real)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    assert (f[0] - f[1]).abs().mean() > 1e-2 * f.abs().mean()  # images are told apart
    assert torch.allclose(f, f_real, rtol=1e-4, atol=1e-5)
    fid = folder_fid(tmp_path / "real", tmp_path / "fake", InceptionFeatures(st))
    # closed form for two images per set: covariance d d^T / 2 (rank 1, d = difference of the
    # two feature vectors), so tr sqrt(C1^1/2 C2 C1^1/2) = |d1 . d2| / 2
    f1, f2 = f_real.double(), f_fake.double()
    d1, d2 = f1[0] - f1[1], f2[0] - f2[1]
    mean_gap = (f1.mean(0) - f2.mean(0)).square().sum()
    expected = float(mean_gap + (d1 @ d1 + d2 @ d2) / 2 - (d1 @ d2).abs())
    assert fid == pytest.approx(expected, rel=1e-3)
    assert fid > 1e-3 * float(d1 @ d1)  # the distributions differ
    with pytest.raises(FileNotFoundError, match="not found"):
        InceptionFeatures(tmp_path / "missing.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not an inception_v3 state dict"):
        InceptionFeatures(tmp_path / "wrong.pth")


def test_clip_score_and_clip_fid_from_local_weights(tmp_path):
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    cfg_path = tmp_path / "tiny-clip-test.json"
    cfg_path.write_text(json.dumps(config))
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test")
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    clip = CLIPModel(weights, "tiny-clip-test", model_config=cfg_path)
    x = ShapesDataset(n=6, seed=0).images
    prompts = ShapesDataset(n=6, seed=0).captions
    img, txt = clip.image_features(x), clip.text_features(prompts)
    assert img.shape == (6, 16) and torch.allclose(img.norm(dim=-1), torch.ones(6), atol=1e-5)
    cos = (img * txt).sum(-1).clamp_min(0)
    assert clip.clip_score(x, prompts) == pytest.approx(float(100 * cos.mean()), rel=1e-5)
    assert clip.clip_fid(x, x) == pytest.approx(0.0, abs=1e-6)
    noise = torch.rand_like(x) * 2 - 1
    assert clip.clip_fid(x, noise) > 1e-3
    expected = fid_from_features(img.double(), clip.image_features(noise).double())
    assert clip.clip_fid(x, noise) == pytest.approx(expected, rel=1e-4)
    assert folder_fid(x, noise, clip) == pytest.approx(expected, rel=1e-4)  # any feature model
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        CLIPModel(tmp_path / "missing.pt", "tiny-clip-test")
