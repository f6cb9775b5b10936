"""Tiny random CLIP / DINO / DINOv2 models saved the way real ones are distributed (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

# the real architectures (CLIP ViT-B/16 vision and text towers, DINO ViT-B/8), for the benchmarks' random models
VIT_B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16)
TEXT_B = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
VIT_B8 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=8)


def _byte_vocab() -> dict[str, int]:
    """A byte-level BPE vocabulary with single characters only (every text tokenises, no merges)."""
    printable = [b for b in range(33, 256) if b != 127 and not 128 <= b <= 160 and b != 173]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def save_tiny_clip(
    folder: Path,
    image_size: int = 32,
    projection_dim: int = 16,
    seed: int = 0,
    vision: dict | None = None,
    text: dict | None = None,
) -> Path:
    """A random CLIP saved with save_pretrained (+ tokenizer, preprocessor config); ``vision`` / ``text``
    override the tiny sizes (the benchmark builds ViT-B/16's architecture this way)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab = _byte_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    eos = vocab["<|endoftext|>"]
    text_cfg = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=eos,
        pad_token_id=eos,
    ) | (text or {})
    vision_cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    ) | (vision or {})
    model = CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=projection_dim))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    return folder


def save_tiny_dino(folder: Path, kind: str = "vit", seed: int = 0, sizes: dict | None = None) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    torch.manual_seed(seed)
    common = dict(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    ) | (sizes or {})
    if kind == "vit":
        model = ViTModel(ViTConfig(**common), add_pooling_layer=False)
    elif kind == "dinov2":
        model = Dinov2Model(Dinov2Config(**common))
    else:
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**common, num_register_tokens=4))
    model.save_pretrained(folder)
    return folder
