"""Small Trackastra model folders for tests, written inside the trackastra environment (it needs torch).

    python tests/trackastra_weights.py toy FOLDER [--cutoff PX]   # deterministic: links every pair within PX
    python tests/trackastra_weights.py random FOLDER              # random weights (seeded)

Both are real ``TrackingTransformer`` folders (``config.yaml``, ``model.pt``,
``train_config.yaml``) that ``Trackastra.from_folder`` loads like a released
model, about 120 kB each. The toy model has ``causal_norm="none"``, so each
association weight is a plain sigmoid, and its output heads are zeroed with
their biases set to 1: every pair of objects closer than the spatial cutoff
gets weight ~1 and every other pair 0. Its lineage is therefore known exactly
for any series whose moves and divisions stay under the cutoff while other
objects stay beyond it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: The toy model's cutoff for the demo scene (``nahual.demo``): above its division steps (at most 5.8 px
#: from mother to daughter; moves are under 2 px), below any pair of different nuclei (at least 10.8 px).
DEMO_CUTOFF = 8.0


def config(cutoff: float, causal_norm: str) -> dict:
    """A tiny 2-d ``TrackingTransformer`` configuration (7 features: Trackastra's ``wrfeat`` in 2-d)."""
    return {
        "coord_dim": 2,
        "feat_dim": 7,
        "d_model": 32,
        "nhead": 2,
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "pos_embed_per_dim": 8,
        "feat_embed_per_dim": 1,
        "window": 4,
        "spatial_pos_cutoff": cutoff,
        "attn_positional_bias": "rope",
        "attn_positional_bias_n_spatial": 16,
        "causal_norm": causal_norm,
        "dropout": 0.0,
    }


def write_model(folder: Path, kind: str, cutoff: float) -> Path:
    """Write a ``toy`` or ``random`` model folder; returns it."""
    import torch
    import yaml
    from trackastra.model import TrackingTransformer

    torch.manual_seed(0)
    if kind == "toy":
        net = TrackingTransformer(**config(cutoff, "none"))
        with torch.no_grad():
            for head in (net.head_x, net.head_y):
                head.fc2.weight.zero_()
                head.fc2.bias.fill_(1.0)
    else:
        net = TrackingTransformer(**config(256, "quiet_softmax"))
    net.save(folder)
    (folder / "train_config.yaml").write_text(yaml.safe_dump({"features": "wrfeat"}))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("toy", "random"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cutoff", type=float, default=12.0, help="toy model: largest linked distance in pixels")
    args = parser.parse_args()
    print(write_model(args.folder, args.kind, args.cutoff))


if __name__ == "__main__":
    main()
