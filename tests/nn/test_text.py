"""Text encoders: offline MiniLM, paraphrase similarity, padding/mask, the embedding cache."""

from __future__ import annotations

import json

import pytest
import torch

from polydiff.nn.text import EmbeddingCache, MiniLMTextEncoder, OpenCLIPTextEncoder, TextEncoder

PROMPTS = [
    "A man is playing a guitar.",
    "Someone plays the guitar.",
    "The stock market fell sharply today.",
]


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        yield MiniLMTextEncoder(cache=False)
    finally:
        mp.undo()


def test_minilm_interface_shapes_and_padding(minilm: MiniLMTextEncoder) -> None:
    assert isinstance(minilm, TextEncoder) and minilm.dim == 384 == minilm.pooled_dim
    out = minilm.encode(["a cat", "a much longer prompt about a cat on a mat"])
    text, mask, pooled = out["text"], out["text_mask"], out["text_pooled"]
    assert text.shape[0] == 2 and text.shape[2] == 384 and mask.shape == text.shape[:2]
    assert mask.dtype == torch.bool and pooled.shape == (2, 384)
    assert int(mask[0].sum()) == 4  # [CLS] a cat [SEP]
    assert bool(mask[1].all())
    assert float(text[0, 4:].abs().max()) == 0.0  # padding is zero
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(2))
    # the short prompt encodes the same alone and in a padded batch
    alone = minilm.encode(["a cat"])
    torch.testing.assert_close(alone["text"][0], text[0, :4], atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in minilm.parameters())
    with pytest.raises(TypeError, match="list"):
        minilm.encode("a cat")


def test_paraphrases_closer_than_unrelated(minilm: MiniLMTextEncoder) -> None:
    p = minilm.encode(PROMPTS)["text_pooled"]
    sim = p @ p.T
    assert float(sim[0, 1]) > 0.7  # paraphrases
    assert float(sim[0, 2]) < 0.2 and float(sim[1, 2]) < 0.2  # unrelated
    # token-level: the mean token embeddings also rank the paraphrase first
    out = minilm.encode(PROMPTS)
    m = out["text_mask"][..., None].float()
    mean = torch.nn.functional.normalize((out["text"] * m).sum(1) / m.sum(1), dim=-1)
    s = mean @ mean.T
    assert float(s[0, 1]) > float(s[0, 2])


def test_cache_hits_and_round_trip(minilm: MiniLMTextEncoder, tmp_path, monkeypatch) -> None:
    cache = EmbeddingCache(tmp_path / "emb.safetensors", encoder="minilm-test")
    minilm.cache = cache
    try:
        first = minilm.encode(PROMPTS[:2])
        assert len(cache) == 2
        calls = []
        original = minilm._encode_batch
        monkeypatch.setattr(minilm, "_encode_batch", lambda ps: calls.append(ps) or original(ps))
        again = minilm.encode([PROMPTS[1], PROMPTS[0], PROMPTS[2]])
        assert calls == [[PROMPTS[2]]]  # only the new prompt was encoded
        torch.testing.assert_close(again["text_pooled"][1], first["text_pooled"][0])
        path = cache.save()
        loaded = EmbeddingCache(path, encoder="minilm-test")
        assert set(loaded.entries) == set(PROMPTS)
        for p in PROMPTS:
            for a, b in zip(loaded.get(p), cache.get(p)):
                torch.testing.assert_close(a, b)
        meta_prompts = json.loads(
            __import__("safetensors").safe_open(str(path), "pt").metadata()["prompts"]
        )
        assert meta_prompts == list(cache.entries)
        with pytest.raises(ValueError, match="encoder"):
            EmbeddingCache(path, encoder="another-model")
    finally:
        minilm.cache = None


def test_missing_model_files_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        MiniLMTextEncoder(model_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        OpenCLIPTextEncoder(tmp_path / "missing.bin")


@pytest.mark.slow
@pytest.mark.peers
def test_minilm_matches_sentence_transformers(minilm: MiniLMTextEncoder) -> None:
    st = pytest.importorskip("sentence_transformers")
    from polydiff.nn.text import minilm_model_dir

    ref = st.SentenceTransformer(str(minilm_model_dir()), device="cpu")
    expected = ref.encode(PROMPTS, convert_to_tensor=True)
    torch.testing.assert_close(
        minilm.encode(PROMPTS)["text_pooled"], expected, atol=1e-5, rtol=1e-4
    )
    tokens = ref.encode(PROMPTS[:1], output_value="token_embeddings")[0]
    torch.testing.assert_close(minilm.encode(PROMPTS[:1])["text"][0], tokens, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_open_clip_encoder_with_local_weights(tmp_path) -> None:
    open_clip = pytest.importorskip("open_clip")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 16,
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
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "polydiff-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    model = open_clip.create_model("polydiff-tiny-clip")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    enc = OpenCLIPTextEncoder(tmp_path / "tiny.pt", model_name="polydiff-tiny-clip")
    out = enc.encode(["a photo of a cat", "a dog"])
    assert enc.dim == 32 and enc.pooled_dim == 16
    assert out["text"].shape[:2] == out["text_mask"].shape and out["text_pooled"].shape == (2, 16)
    ids = open_clip.get_tokenizer("polydiff-tiny-clip")(["a photo of a cat", "a dog"])
    assert out["text_mask"].sum(1).tolist() == (ids.argmax(-1) + 1).tolist()
    torch.testing.assert_close(
        out["text_pooled"], model.encode_text(ids).detach(), atol=1e-5, rtol=1e-4
    )
