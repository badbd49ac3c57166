"""What the DINO tests run inside ``envs/dino``: tiny test models, and the direct computation the adapter must match.

Only numpy is imported at the top, so the orchestrator imports :func:`scene` from here too; torch and
transformers are imported by the commands, which run in the environment's own Python::

    ENV/bin/python tests/dino_env.py hub-v2 REPO WEIGHTS_DIR   # torch.hub repo + dinov2_vits14[_reg4]_pretrain.pth
    ENV/bin/python tests/dino_env.py hub-v3 CLONE WEIGHTS_DIR  # dinov3 clone layout + dinov3_vits16_pretrain.pth
    ENV/bin/python tests/dino_env.py hf OUT_DIR                # OUT_DIR/hf-v2, OUT_DIR/hf-v3 (save_pretrained)
    ENV/bin/python tests/dino_env.py direct SPEC.json IMAGE.npy BOXES.npy OUT.npy

``hub-v2`` writes a ``hubconf.py`` whose entries are named as upstream's (``dinov2_vits14``, and
``dinov2_vits14_reg`` with 4 register tokens) and build a 2-block ViT/14 of width 32; ``hub-v3`` writes
``dinov3/hub/backbones.py`` with a ``dinov3_vits16`` entry (patch 16, 4 storage tokens), beside a
``hubconf.py`` that imports torchvision as upstream's does (so loading through it would fail here). The
entries take ``pretrained`` as upstream's do, and refuse ``pretrained=True`` (they have nothing to
download). Their state dicts are seeded random tensors saved under the names the adapter expects.
``hf`` writes a tiny ``Dinov2Model`` and ``DINOv3ViTModel`` (width 64). All of it is deterministic.

``direct`` computes the vectors of the boxes it is given without the adapter, as its docstring says:
each channel normalised over the frame to its 1st-99.8th percentiles, the box cut out by hand
(zero-padded past the frame), each channel as a grey RGB view, ``F.interpolate`` to the spec's
``size`` ([H, W]), ImageNet mean/std, then the model's own ``forward_features`` (hub) or forward (hf):
per view the CLS token then the mean patch token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["HF_WIDTH", "HUB_WIDTH", "scene"]

#: Token widths of the tiny models.
HUB_WIDTH = 32
HF_WIDTH = 64

#: The tiny ViT, written into the test repos: the ``forward_features`` keys of upstream's DinoVisionTransformer.
TINY_VIT = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, img_size=224, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_register_tokens=0):
        super().__init__()
        self.patch_size, self.embed_dim, self.num_register_tokens = patch_size, embed_dim, num_register_tokens
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        side = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, side * side + 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)

    def forward_features(self, x):
        b, _, h, w = x.shape
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        gh, gw, side = h // self.patch_size, w // self.patch_size, int((self.pos_embed.shape[1] - 1) ** 0.5)
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        patches = patches + grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        cls = self.cls_token.expand(b, -1, -1) + self.pos_embed[:, :1]
        tokens = self.norm(self.blocks(torch.cat([cls, self.register_tokens.expand(b, -1, -1), patches], 1)))
        r = self.num_register_tokens
        return {"x_norm_clstoken": tokens[:, 0], "x_norm_regtokens": tokens[:, 1 : r + 1],
                "x_norm_patchtokens": tokens[:, r + 1 :]}

    def forward(self, x):
        return self.forward_features(x)["x_norm_clstoken"]


def _built(pretrained, **kwargs):
    if pretrained:
        raise ValueError("offline test repo: build with pretrained=False and load a state dict")
    return TinyViT(**kwargs)
"""

HUBCONF_V2 = (
    'dependencies = ["torch"]\n'
    + TINY_VIT
    + """

def dinov2_vits14(*, pretrained=True, **kwargs):
    return _built(pretrained, patch_size=14, **kwargs)


def dinov2_vits14_reg(*, pretrained=True, **kwargs):
    return _built(pretrained, patch_size=14, num_register_tokens=4, **kwargs)
"""
)

BACKBONES_V3 = """
def dinov3_vits16(*, pretrained=True, **kwargs):
    from ..models.vision_transformer import _built

    return _built(pretrained, patch_size=16, num_register_tokens=4, **kwargs)
"""

#: The upstream dinov3 hubconf imports its detection heads, which import torchvision.
HUBCONF_V3 = "import torchvision  # noqa: F401  (as upstream's dinov3.hub.detectors does)\n"


def scene(channels: int = 2, shape: tuple[int, int] = (96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """A ``(channels, y, x)`` float32 image and labels 2, 5 and 9: discs of radius 9, 12, 6; 9 crosses the border."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for label, (cy, cx, r) in zip((2, 5, 9), ((24, 30, 9), (60, 60, 12), (3, shape[1] - 8, 6))):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = label
    rng = np.random.default_rng(3)
    image = rng.normal(10.0, 2.0, (channels, *shape)).astype(np.float32)
    for c in range(channels):
        image[c] += (labels > 0) * (50.0 + 25.0 * c) + (c + 1) * np.sin(xx / (5.0 + c)).astype(np.float32)
    return image, labels


def _seeded_state(module_file: Path, entries: dict[str, str], weights_dir: Path) -> None:
    """Build each entry of ``module_file`` (name -> weight file), fill it with seeded values, save its state dict."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("tiny_repo", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights_dir.mkdir(parents=True, exist_ok=True)
    for seed, (entry, file) in enumerate(entries.items()):
        torch.manual_seed(seed)
        model = module.TinyViT(**_ENTRY_ARGS[entry])
        state = {key: torch.randn_like(value) * 0.2 for key, value in model.state_dict().items()}
        torch.save(state, weights_dir / file)


_ENTRY_ARGS = {
    "dinov2_vits14": {"patch_size": 14},
    "dinov2_vits14_reg": {"patch_size": 14, "num_register_tokens": 4},
    "dinov3_vits16": {"patch_size": 16, "num_register_tokens": 4},
}


def hub_v2(repo: Path, weights_dir: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "hubconf.py").write_text(HUBCONF_V2)
    files = {"dinov2_vits14": "dinov2_vits14_pretrain.pth", "dinov2_vits14_reg": "dinov2_vits14_reg4_pretrain.pth"}
    _seeded_state(repo / "hubconf.py", files, weights_dir)


def hub_v3(clone: Path, weights_dir: Path) -> None:
    for package in ("dinov3", "dinov3/hub", "dinov3/models"):
        (clone / package).mkdir(parents=True, exist_ok=True)
        (clone / package / "__init__.py").write_text("")
    (clone / "dinov3" / "models" / "vision_transformer.py").write_text(TINY_VIT)
    (clone / "dinov3" / "hub" / "backbones.py").write_text(BACKBONES_V3)
    (clone / "hubconf.py").write_text(HUBCONF_V3)
    vit = clone / "dinov3" / "models" / "vision_transformer.py"
    _seeded_state(vit, {"dinov3_vits16": "dinov3_vits16_pretrain.pth"}, weights_dir)


def hf(out: Path) -> None:
    import torch
    from transformers import Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel

    common = {"hidden_size": HF_WIDTH, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**common, patch_size=14, image_size=224)).save_pretrained(out / "hf-v2")
    torch.manual_seed(1)
    config = DINOv3ViTConfig(**common, patch_size=16, image_size=224, num_register_tokens=4)
    DINOv3ViTModel(config).save_pretrained(out / "hf-v3")


def direct(spec: dict, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The rows the adapter must return for ``boxes`` of ``image``, computed without it (module docstring)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    low, high = np.percentile(image.astype(np.float64), [1.0, 99.8], axis=(1, 2))
    shown = ((image - low[:, None, None]) / (high - low)[:, None, None]).astype(np.float32)
    model, tokens = _direct_model(spec)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rows = []
    for y_min, x_min, y_max, x_max in boxes.tolist():
        pad = max(0, -y_min, -x_min, y_max - image.shape[1], x_max - image.shape[2])
        padded = np.pad(shown, ((0, 0), (pad, pad), (pad, pad)))
        crop = padded[:, y_min + pad : y_max + pad, x_min + pad : x_max + pad]
        views = torch.from_numpy(np.repeat(crop[:, None], 3, axis=1).copy())  # each channel as grey RGB
        views = F.interpolate(views, size=tuple(spec["size"]), mode="bilinear", antialias=True, align_corners=False)
        with torch.inference_mode():
            cls, patches = tokens(model, (views - mean) / std)
        rows.append(torch.cat([cls, patches.mean(dim=1)], dim=1).reshape(-1).numpy())
    return np.stack(rows).astype(np.float32)


def _direct_model(spec: dict):
    """The model of ``spec`` and how to read its (CLS, patch tokens), as its repo or transformers documents."""
    import torch

    if spec["kind"] == "hf":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(spec["folder"]).eval()
        registers = getattr(model.config, "num_register_tokens", 0)

        def read(net, x):
            hidden = net(pixel_values=x).last_hidden_state
            return hidden[:, 0], hidden[:, 1 + registers :]

        return model, read
    if spec["kind"] == "hub-v3":
        sys.path.insert(0, spec["repo"])
        from dinov3.hub import backbones

        model = getattr(backbones, spec["entry"])(pretrained=False)
    else:
        model = torch.hub.load(spec["repo"], spec["entry"], source="local", pretrained=False)
    model.load_state_dict(torch.load(spec["weights"], map_location="cpu", weights_only=True), strict=True)

    def read(net, x):
        features = net.forward_features(x)
        return features["x_norm_clstoken"], features["x_norm_patchtokens"]

    return model.eval(), read


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("hub-v2", "hub-v3"):
        command = commands.add_parser(name)
        command.add_argument("repo", type=Path)
        command.add_argument("weights", type=Path)
    commands.add_parser("hf").add_argument("out", type=Path)
    command = commands.add_parser("direct")
    for name in ("spec", "image", "boxes", "out"):
        command.add_argument(name, type=Path)
    args = parser.parse_args(argv)
    if args.command == "hub-v2":
        hub_v2(args.repo, args.weights)
    elif args.command == "hub-v3":
        hub_v3(args.repo, args.weights)
    elif args.command == "hf":
        hf(args.out)
    else:
        spec = json.loads(args.spec.read_text())
        np.save(args.out, direct(spec, np.load(args.image), np.load(args.boxes)))


if __name__ == "__main__":
    main(sys.argv[1:])
