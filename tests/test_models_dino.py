"""The ``dinov2`` and ``dinov3`` models through a real server in the CPU build of ``envs/dino``.

The models are tiny ones this module writes inside that environment (``tests/dino_env.py``): a
torch.hub repo with DINOv2's entry names and a DINOv3 clone layout, both put where the upstream
names resolve (``$TORCH_HOME/hub/facebookresearch_dinov{2,3}_main``), their state dicts added to a
weights cache of this module's own (``$NAHUAL_WEIGHTS``), and two ``save_pretrained`` folders, one
also laid out as a Hugging Face cache snapshot (``$HF_HOME``). The served vectors are compared with
a direct computation in the same environment that does not go through the adapter. The environment
must have been prepared (``.ci/install`` does it once per CI run); the module skips, saying how,
where it was not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TESTS
from dino_env import HF_WIDTH, HUB_WIDTH, scene
from served_models import ServedModelTests, cpu_environment, cpu_spec, cuda_environment_lock

import nahual
import nahual.errors
from nahual.catalog import envs_dir
from nahual.models.dino import DINOv2, DINOv3
from nahual.weights import add, checksum

pytestmark = pytest.mark.slow

SPEC = cpu_spec("dino")
HELPER = TESTS / "dino_env.py"
LIMITS = nahual.Timeout(connect=10.0, request=180.0, startup=120.0)
#: Load params of every served instance: one torch thread, as every test on 2 cores.
ONE_THREAD = {"threads": 1}
#: Load params of the contract tests' instance.
SMALL = {"threads": 1, "size": 28}
#: A Hugging Face hub id the test puts in its own Hugging Face cache.
HF_ID = "tiny/dinov2"


def helper(*args: str | Path) -> None:
    done = subprocess.run(
        [cpu_environment("dino").python()[0], str(HELPER), *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def hf_cache_snapshot(folder: Path, hf_home: Path, repo_id: str) -> None:
    """``folder`` laid out as ``hf download`` leaves a model in ``$HF_HOME/hub``."""
    revision = "0" * 40
    cached = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, cached / "snapshots" / revision)
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text(revision)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Iterator[Path]:
    """The test models, with $NAHUAL_WEIGHTS, $TORCH_HOME and $HF_HOME pointing at this module's folders."""
    cpu_environment("dino")
    root = tmp_path_factory.mktemp("dino")
    hub = root / "torch" / "hub"
    helper("hub-v2", hub / "facebookresearch_dinov2_main", root / "weights")
    helper("hub-v3", hub / "facebookresearch_dinov3_main", root / "weights")
    helper("hf", root)
    hf_cache_snapshot(root / "hf-v2", root / "hf", HF_ID)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAHUAL_WEIGHTS", str(root / "cache"))
        patch.setenv("TORCH_HOME", str(root / "torch"))
        patch.setenv("HF_HOME", str(root / "hf"))
        for model, name in (
            ("dinov2", "dinov2_vits14_pretrain.pth"),
            ("dinov2", "dinov2_vits14_reg4_pretrain.pth"),
            ("dinov3", "dinov3_vits16_pretrain.pth"),
        ):
            add(model, name, root / "weights" / name)
        add("dinov3", "tiny-hf", root / "hf-v3")
        yield root


@pytest.fixture(scope="module")
def client(made) -> Iterator[nahual.Client]:
    with nahual.launch(SPEC, timeout=LIMITS) as server:
        with server.client() as connected:
            yield connected


def direct(made: Path, tmp_path: Path, spec: dict, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per row, per view: CLS then mean patch token, computed in the environment without the adapter."""
    hub = made / "torch" / "hub"
    repos = {"hub-v2": hub / "facebookresearch_dinov2_main", "hub-v3": hub / "facebookresearch_dinov3_main"}
    spec = {**spec, "repo": str(repos.get(spec["kind"], "")), "weights": str(made / "weights" / spec.get("file", ""))}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "boxes.npy", boxes)
    helper("direct", tmp_path / "spec.json", tmp_path / "image.npy", tmp_path / "boxes.npy", tmp_path / "out.npy")
    return np.load(tmp_path / "out.npy")


def boxes_of(out: dict) -> np.ndarray:
    return np.stack([out["obs"][f"bbox_{key}"] for key in ("y_min", "x_min", "y_max", "x_max")], axis=1)


#: (model, load params, call params, (image, labels or None) maker, direct spec): granularities and routes.
CASES = {
    "object-hub-v2": (
        "dinov2",
        {"size": 56},
        {"tokens": "both"},
        scene,
        {"kind": "hub-v2", "entry": "dinov2_vits14", "file": "dinov2_vits14_pretrain.pth", "size": [56, 56]},
    ),
    "tile-hub-v2-registers": (
        "dinov2",
        {"model": "dinov2_vits14_reg", "granularity": "tile", "tile_size": 48, "size": 42},
        {"tokens": "both"},
        lambda: (scene()[0], None),
        {"kind": "hub-v2", "entry": "dinov2_vits14_reg", "file": "dinov2_vits14_reg4_pretrain.pth", "size": [42, 42]},
    ),
    # a 96 x 80 frame at size 64: the shorter side 64, the longer 96 * 64 / 80 = 76.8 -> 80 (patch 16)
    "frame-hub-v3": (
        "dinov3",
        {"granularity": "frame", "size": 64},
        {"tokens": "both"},
        lambda: (scene(shape=(96, 80))[0], None),
        {"kind": "hub-v3", "entry": "dinov3_vits16", "file": "dinov3_vits16_pretrain.pth", "size": [80, 64]},
    ),
    "object-5-channels-hf-v3": (
        "dinov3",
        {"model": "tiny-hf", "size": 32},
        {"tokens": "both", "channels": "each"},
        lambda: scene(channels=5),
        {"kind": "hf", "size": [32, 32]},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_served_vectors_equal_a_direct_computation_of_their_boxes(client, made, tmp_path, case):
    model, load, call, make, spec = CASES[case]
    image, labels = make()
    payload = {"image": image, "axes": "cyx", **({"labels": labels} if labels is not None else {})}
    out = client.load(model, **ONE_THREAD, **load)(payload, **call)
    boxes = boxes_of(out)
    if spec["kind"] == "hf":
        spec["folder"] = str(made / "cache" / "dinov3" / "tiny-hf")
    expected = direct(made, tmp_path, spec, image, boxes)
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape == expected.shape
    np.testing.assert_allclose(out["embedding"], expected, rtol=1e-5, atol=1e-5)
    if labels is not None:  # objects in label order, each box centred on its object
        assert out["obs"]["label"].tolist() == [2, 5, 9]
    else:
        assert out["obs"]["label"].tolist() == [0] * len(boxes)


def test_the_object_boxes_tile_boxes_and_frame_box_are_where_the_crops_were_cut(client):
    image, labels = scene()
    objects = client.load("dinov2", **ONE_THREAD, size=28)({"image": image, "labels": labels, "axes": "cyx"})
    # label 2: disc r=9 at (24, 30) -> bbox 19 px -> side ceil(1.5 * 19) = 29, centred on pixel (24, 30)
    assert boxes_of(objects)[0].tolist() == [24 - 14, 30 - 14, 24 + 15, 30 + 15]
    assert boxes_of(objects)[2].tolist() == [-5, 78, 15, 98]  # label 9 crosses the top and right borders
    tiles = client.load("dinov2", **ONE_THREAD, size=28, granularity="tile", tile_size=64)(
        {"image": image, "axes": "cyx"}
    )
    assert boxes_of(tiles).tolist() == [[0, 0, 64, 64], [0, 64, 64, 128], [64, 0, 128, 64], [64, 64, 128, 128]]
    frame = client.load("dinov2", **ONE_THREAD, size=28, granularity="frame")({"image": image, "axes": "cyx"})
    assert boxes_of(frame).tolist() == [[0, 0, 96, 96]]


@pytest.mark.parametrize(
    ("model", "load", "source", "width"),
    [
        ("dinov2", {}, "hub", HUB_WIDTH),
        ("dinov2", {"model": "dinov2_vits14_reg"}, "hub", HUB_WIDTH),
        ("dinov2", {"model": HF_ID}, "hf", HF_WIDTH),  # a hub id found in the Hugging Face cache, offline
        ("dinov3", {}, "hub", HUB_WIDTH),
        ("dinov3", {"model": "tiny-hf"}, "hf", HF_WIDTH),  # a save_pretrained folder in the weights cache
    ],
)
def test_every_route_loads_and_gives_views_times_token_width(client, model, load, source, width):
    image, labels = scene(channels=3)
    handle = client.load(model, **ONE_THREAD, size=32 if model == "dinov3" else 28, **load)
    out = handle({"image": image, "labels": labels, "axes": "cyx"}, tokens="both")
    assert out["embedding"].shape == (3, 3 * 2 * width)
    assert out["columns"][:2] == ["c0_cls_0", "c0_cls_1"] and out["columns"][width] == "c0_mean_0"
    assert out["columns"][-1] == f"c2_mean_{width - 1}" and len(out["columns"]) == 3 * 2 * width
    assert out["uns"]["source"] == source
    triplet = handle({"image": image, "labels": labels, "axes": "cyx"}, channels=[2, 0, 1])
    assert triplet["embedding"].shape == (3, width) and triplet["columns"][0] == "rgb_cls_0"


def test_uns_names_the_weights_their_checksum_and_the_preprocessing(client, made):
    image, labels = scene()
    out = client.load("dinov2", **ONE_THREAD, size=28)({"image": image, "labels": labels, "axes": "cyx"})
    uns = out["uns"]
    assert (uns["model"], uns["source"], uns["weights"]) == ("dinov2_vits14", "hub", "dinov2_vits14_pretrain.pth")
    assert uns["sha256"] == checksum(made / "weights" / "dinov2_vits14_pretrain.pth")
    assert uns["preprocessing"]["size"] == 28 and uns["preprocessing"]["patch_size"] == 14
    assert uns["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and uns["preprocessing"]["normalize"] == "percentile"


def test_patch_grid_is_per_view_and_its_mean_is_the_mean_token(client):
    image, labels = scene()
    handle = client.load("dinov2", **ONE_THREAD, size=56)
    out = handle({"image": image, "labels": labels, "axes": "cyx"}, patch_grid=True, tokens="mean")
    assert out["patches"].shape == (3, 4, 4, 2 * HUB_WIDTH) and out["patches"].dtype == np.float32
    per_view = out["patches"].reshape(3, 16, 2 * HUB_WIDTH).mean(axis=1)
    np.testing.assert_allclose(per_view, out["embedding"], rtol=1e-5, atol=1e-6)
    assert "patches" not in handle({"image": image, "labels": labels, "axes": "cyx"})


def test_batch_size_one_and_sixty_four_give_the_same_vectors(client):
    image, labels = scene(channels=3)
    handle = client.load("dinov2", **ONE_THREAD, size=28)
    one = handle({"image": image, "labels": labels, "axes": "cyx"}, batch_size=1)["embedding"]
    many = handle({"image": image, "labels": labels, "axes": "cyx"}, batch_size=64)["embedding"]
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)


def test_a_frame_without_objects_gives_no_rows_and_the_full_width(client):
    image, labels = scene()
    out = client.load("dinov2", **ONE_THREAD, size=28)(
        {"image": image, "labels": np.zeros_like(labels), "axes": "cyx"}, patch_grid=True, tokens="both"
    )
    assert out["embedding"].shape == (0, 2 * 2 * HUB_WIDTH) and len(out["columns"]) == 2 * 2 * HUB_WIDTH
    assert out["patches"].shape == (0, 2, 2, 2 * HUB_WIDTH) and out["obs"]["label"].shape == (0,)


def test_masking_the_background_changes_only_crops_with_neighbours_or_background(client):
    image, labels = scene()
    handle = client.load("dinov2", **ONE_THREAD, size=28)
    kept = handle({"image": image, "labels": labels, "axes": "cyx"})["embedding"]
    for over in ("image", "crop"):
        masked = handle({"image": image, "labels": labels, "axes": "cyx"}, background="mask", normalize_over=over)
        assert masked["embedding"].shape == kept.shape and not np.allclose(masked["embedding"], kept)


def remote_error(client: nahual.Client, registered: str = "dinov2", /, **params: Any) -> nahual.RemoteError:
    """The error of loading model ``registered`` with ``params``, checked to be one line."""
    with pytest.raises(nahual.RemoteError) as caught:
        client.load(registered, **ONE_THREAD, **params)
    assert "\n" not in caught.value.remote_message
    return caught.value


def test_a_size_that_is_not_a_multiple_of_the_patch_is_a_param_error(client):
    error = remote_error(client, size=50)
    assert error.remote_type == "ParamError"
    assert error.remote_message == "param 'size' expects a multiple of the patch size 14, got 50"
    image, labels = scene()
    with pytest.raises(nahual.RemoteError, match="multiple of the patch size 16, got 56"):
        client.load("dinov3", **ONE_THREAD, size=32)({"image": image, "labels": labels, "axes": "cyx"}, size=56)


def test_a_missing_weight_is_one_line_naming_the_fetch_or_add_command(client, made):
    error = remote_error(client, model="dinov2_vitb14")
    assert error.remote_type == "WeightsError"
    assert str(made / "cache" / "dinov2" / "dinov2_vitb14_pretrain.pth") in error.remote_message
    assert "nahual weights fetch dinov2 dinov2_vitb14_pretrain.pth" in error.remote_message
    gated = remote_error(client, "dinov3", model="dinov3_vitb16")
    assert gated.remote_type == "WeightsError" and "licence-gated" in gated.remote_message
    assert "nahual weights add dinov3 dinov3_vitb16_pretrain.pth FILE" in gated.remote_message
    absent = remote_error(client, model="someone/absent")
    assert absent.remote_type == "WeightsError" and "hf download someone/absent" in absent.remote_message


def test_a_repo_that_is_not_in_the_torch_hub_cache_names_the_folder_looked_at(client, made):
    error = remote_error(client, repo="nobody/nothing:v1")
    assert error.remote_type == "ConfigError"
    assert str(made / "torch" / "hub" / "nobody_nothing_v1") in error.remote_message
    assert "git clone https://github.com/nobody/nothing" in error.remote_message


def test_a_clone_folder_and_a_weights_file_load_by_path(client, made):
    image, labels = scene()
    payload = {"image": image, "labels": labels, "axes": "cyx"}
    clone, file = (
        made / "torch" / "hub" / "facebookresearch_dinov2_main",
        made / "weights" / "dinov2_vits14_pretrain.pth",
    )
    by_path = client.load("dinov2", **ONE_THREAD, size=28, repo=str(clone), weights=str(file))(payload)
    by_name = client.load("dinov2", **ONE_THREAD, size=28)(payload)
    np.testing.assert_array_equal(by_path["embedding"], by_name["embedding"])
    assert by_path["uns"]["weights"] == file.name and by_path["uns"]["sha256"] == by_name["uns"]["sha256"]


def test_a_state_dict_of_another_model_is_one_line_naming_the_file(client, made):
    file = made / "weights" / "dinov2_vits14_pretrain.pth"  # no register tokens
    error = remote_error(client, model="dinov2_vits14_reg", weights=str(file))
    assert error.remote_type == "WeightsError"
    assert error.remote_message.startswith(f"weights {file} do not fit 'dinov2_vits14_reg': Error(s) in loading")


def test_a_second_dinov3_clone_in_one_server_is_refused(client, made, tmp_path):
    client.load("dinov3", **ONE_THREAD, size=32)  # dinov3 imported from the torch hub cache's clone
    other = shutil.copytree(made / "torch" / "hub" / "facebookresearch_dinov3_main", tmp_path / "dinov3-clone")
    error = remote_error(client, "dinov3", repo=str(other))
    assert error.remote_type == "ConfigError" and f"start another one for {other}" in error.remote_message


def test_a_gpu_that_is_not_there_is_one_line_at_load(client):
    error = remote_error(client, device="cuda:0")
    assert error.remote_type == "ConfigError"
    assert (
        error.remote_message
        == "dinov2: device 'cuda:0' asked for, but torch 2.13.0+cpu (a CPU build) sees no CUDA device"
    )
    half = remote_error(client, device="cpu", dtype="bfloat16")
    assert half.remote_type == "ConfigError" and "CUDA only" in half.remote_message


def test_load_params_cannot_change_per_call(client):
    image, labels = scene()
    handle = client.load("dinov2", **ONE_THREAD, size=28)
    with pytest.raises(nahual.RemoteError, match="fixed at load"):
        handle({"image": image, "labels": labels, "axes": "cyx"}, granularity="frame")


def test_the_instance_contract_follows_the_granularity(client):
    objects = client.load("dinov2", **ONE_THREAD, size=28)
    tiles = client.load("dinov2", **ONE_THREAD, size=28, granularity="tile")
    assert (objects.contract.inputs, objects.contract.tiling) == (("image", "labels"), False)
    assert (tiles.contract.inputs, tiles.contract.tiling) == (("image",), True)
    assert objects.contract.output == "embeddings" and objects.contract.axes == ("cyx",)


class TestDINOv2(ServedModelTests):
    model_class = DINOv2
    load_params = SMALL

    def make_payload(self) -> dict:
        image, labels = scene()
        return {"image": image, "labels": labels, "axes": "cyx"}


def test_the_models_are_registered_and_in_the_catalog_with_one_cuda_environment():
    from nahual.catalog import default_env
    from nahual.registry import available_models

    assert default_env("dinov2") == default_env("dinov3") == f"uv:{envs_dir() / 'dino'}"
    assert available_models()["dinov3"] == "nahual.models.dino:DINOv3"
    lock = cuda_environment_lock("dino")
    for name in ("torchvision", "timm"):
        assert f'name = "{name}"' not in lock


def test_the_known_weights_are_the_dinov2_releases_and_dinov3_has_none():
    assert len(DINOv2.weights) == 8 and DINOv3.weights == {}
    source = DINOv2.weights["dinov2_vitb14_reg4_pretrain.pth"]
    assert source.url == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"
