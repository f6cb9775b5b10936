"""scripts/cross_check.py: its state-dict converters, and a run without the published sources."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cross_check.py"
PARTS = ("converter", "dense", "lerf/relevancy", "crops", "3dovs/relevancy", "3dovs/rda", "3dovs/fda", "3dovs/dino")


def _cross_check():
    """The script as a module (its converters); importing it installs no stand-in module."""
    if "cross_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("cross_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["cross_check"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["cross_check"]


def _numel(state: dict) -> int:
    return sum(v.numel() for v in state.values())


def test_converters_use_every_transformers_tensor_once(tmp_path):
    """Both converters place each weight of the transformers model exactly once (no tensor dropped or doubled)."""
    from tiny_models import save_tiny_clip, save_tiny_dino
    from transformers import CLIPModel, ViTModel

    cc = _cross_check()
    clip = CLIPModel.from_pretrained(save_tiny_clip(tmp_path / "clip"))
    converted = cc.clip_to_open_clip(clip)
    source = {k: v for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    assert _numel(converted) == _numel(source)
    dino = ViTModel.from_pretrained(save_tiny_dino(tmp_path / "dino"), add_pooling_layer=False)
    assert _numel(cc.vit_to_dino(dino)) == _numel(dino.state_dict())
    assert cc.vit_to_dino(dino)["blocks.1.attn.qkv.weight"].shape == (3 * 24, 24)


CONVERTER_CHECK = """
import sys
from pathlib import Path
import torch, torch.nn.functional as F
sys.path.insert(0, {scripts!r})
import cross_check as cc
from tiny_models import save_tiny_clip
from ovseg3d.teachers.clip import TransformersClip

open_clip = cc.import_open_clip()  # with a torchvision stand-in where torchvision does not load
clip = TransformersClip(str(save_tiny_clip(Path({folder!r}))), torch.device("cpu"), half=False)
oc = cc.build_open_clip(open_clip, clip.model)
pixels = torch.randn(3, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0))
texts = ["a red mug", "a book", "object"]
ids = clip.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
with torch.no_grad():
    image = (clip.model.get_image_features(pixel_values=pixels).pooler_output, oc.encode_image(pixels))
    text = (clip.encode_text(texts), F.normalize(oc.encode_text(ids), dim=-1))
print((image[0] - image[1]).abs().max().item(), (text[0] - text[1]).abs().max().item())
"""


def test_tiny_clip_converted_to_open_clip_gives_the_same_embeddings(tmp_path):
    """The tiny transformers CLIP of tests/tiny_models.py and its open_clip conversion embed images and texts
    alike. In a subprocess: open_clip needs torchvision, which the script replaces with a stand-in there."""
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (pip install 'ovseg3d[openclip]')")
    code = CONVERTER_CHECK.format(scripts=str(SCRIPT.parent), folder=str(tmp_path / "clip"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    image_diff, text_diff = map(float, out.stdout.split()[-2:])
    assert image_diff < 1e-5 and text_diff < 1e-5


def test_without_sources_every_part_is_skipped(tmp_path, capsys):
    report = tmp_path / "cross_check.json"
    args = ["--output", str(report), "--ovs", str(tmp_path / "nowhere"), "--threads", str(torch.get_num_threads())]
    with torch.random.fork_rng():  # the script seeds torch
        assert _cross_check().main(args) == 0
    rows = json.loads(report.read_text())["rows"]
    assert [r["part"] for r in rows] == list(PARTS)
    assert all(r["status"] == "skipped" and r["note"] for r in rows)
    assert "extract_clip_feature.py not found" in next(r["note"] for r in rows if r["part"] == "3dovs/fda")
    printed = capsys.readouterr().out.splitlines()
    for part in PARTS:
        assert any(line.startswith(part) and "skipped" in line for line in printed), part
