"""Tests of ``nahual.models._crops``: crop boxes and pixels, normalisation, channel views, input errors."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nahual.errors import ContractError, ParamError
from nahual.models._crops import channel_views, frame_crop, normalize, object_crops, tile_crops


def ramp(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 image whose every pixel (and channel) has its own value, offset so that none is 0."""
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1


def test_object_crops_are_centred_squares_in_ascending_label_order():
    image = ramp((2, 8, 9))
    labels = np.zeros((8, 9), np.int32)
    labels[1:3, 1:4] = 5  # bbox 2 x 3: centre pixel (2, 2)
    labels[5, 6] = 3  # one pixel
    crops = object_crops(image, labels, scale=1.0)
    assert crops.labels.tolist() == [3, 5]
    assert crops.labels.dtype == np.int64 and crops.boxes.dtype == np.int64
    assert crops.boxes.tolist() == [[5, 6, 6, 7], [1, 1, 4, 4]]
    np.testing.assert_array_equal(crops.pixels[0], image[:, 5:6, 6:7])
    np.testing.assert_array_equal(crops.pixels[1], image[:, 1:4, 1:4])
    assert all(p.dtype == np.float32 for p in crops.pixels)


@pytest.mark.parametrize(
    ("rows", "size", "box_rows"),
    [
        ((2, 4), 3, (2, 5)),  # even bbox side: centre is the later middle pixel (3), at crop pixel 1
        ((2, 5), 2, (2, 4)),  # odd bbox side: centre pixel 3, at crop pixel 1
        ((2, 5), 3, (2, 5)),
        ((2, 4), 4, (1, 5)),
    ],
)
def test_centre_pixel_rule_for_even_and_odd_sides(rows, size, box_rows):
    labels = np.zeros((9, 9), np.uint8)
    labels[rows[0] : rows[1], 4] = 1
    box = object_crops(np.ones((1, 9, 9)), labels, size=size).boxes[0]
    assert (box[0], box[2]) == box_rows
    assert (box[1], box[3]) == (4 - size // 2, 4 - size // 2 + size)


@pytest.mark.parametrize(("scale", "side"), [(1.5, 2), (0.1, 1), (3.0, 3), (1.0, 1)])
def test_a_one_pixel_object_gets_a_side_of_ceil_scale_at_least_1(scale, side):
    labels = np.zeros((9, 9), np.int16)
    labels[4, 4] = 1
    assert object_crops(np.ones((1, 9, 9)), labels, scale=scale).pixels[0].shape == (1, side, side)


def test_scaled_side_is_not_pushed_up_by_float_rounding():
    labels = np.zeros((60, 60), np.int64)
    labels[2:52, 3:5] = 1  # 50 rows: 1.1 * 50 is 55.00000000000001 in floats
    assert object_crops(np.ones((1, 60, 60)), labels, scale=1.1).pixels[0].shape == (1, 55, 55)


def test_boxes_past_each_edge_keep_their_full_extent_and_are_zero_padded():
    image = ramp((3, 6, 7))
    labels = np.zeros((6, 7), np.uint16)
    labels[0, 0] = 1  # past the top and left edges
    labels[5, 6] = 2  # past the bottom and right edges
    crops = object_crops(image, labels, size=3)
    assert crops.boxes.tolist() == [[-1, -1, 2, 2], [4, 5, 7, 8]]
    top_left, bottom_right = crops.pixels
    assert not top_left[:, 0, :].any() and not top_left[:, :, 0].any()
    np.testing.assert_array_equal(top_left[:, 1:, 1:], image[:, 0:2, 0:2])
    assert not bottom_right[:, 2, :].any() and not bottom_right[:, :, 2].any()
    np.testing.assert_array_equal(bottom_right[:, :2, :2], image[:, 4:6, 5:7])


def test_a_crop_larger_than_the_frame_holds_the_whole_frame_padded():
    image = ramp((1, 2, 3))
    labels = np.ones((2, 3), np.int32)
    crops = object_crops(image, labels, size=6)
    assert crops.boxes.tolist() == [[-2, -2, 4, 4]]
    expected = np.zeros((1, 6, 6), np.float32)
    expected[:, 2:4, 2:5] = image
    np.testing.assert_array_equal(crops.pixels[0], expected)


def test_mask_zeroes_background_and_other_objects_on_normalised_values():
    image = -ramp((2, 5, 5))  # negative, as normalised values can be
    labels = np.zeros((5, 5), np.uint32)
    labels[1:4, 1:3] = 70000
    labels[1:4, 3] = 7
    masked = object_crops(image, labels, size=5, background="mask")
    kept = object_crops(image, labels, size=5, background="keep")
    assert masked.labels.tolist() == [7, 70000]
    for crop, box, label in zip(masked.pixels, masked.boxes, masked.labels):
        y0, x0 = box[:2]
        inside = np.zeros((5, 5), bool)
        inside[max(y0, 0) - y0 : 5 - y0, max(x0, 0) - x0 : 5 - x0] = True
        mine = np.zeros((5, 5), bool)
        mine[inside] = (labels[max(y0, 0) : y0 + 5, max(x0, 0) : x0 + 5] == label).ravel()
        assert (crop[:, ~mine] == 0).all() and (crop[:, mine] < 0).all()
        assert not np.signbit(crop[:, ~mine]).any()  # 0, not -0
    other = kept.pixels[1][:, 2, 3]  # label 70000's crop centre row, the column of label 7
    assert (other < 0).all() and (masked.pixels[1][:, 2, 3] == 0).all()


def test_mask_tells_apart_labels_that_float32_would_merge():
    labels = np.zeros((1, 2), np.int64)
    labels[0] = [2**24, 2**24 + 1]
    masked = object_crops(np.ones((1, 1, 2)), labels, size=2, background="mask")
    assert masked.labels.tolist() == [2**24, 2**24 + 1]
    assert [int(p.sum()) for p in masked.pixels] == [1, 1]


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_labels_of_any_integer_dtype_give_the_same_crops(dtype):
    labels = np.zeros((6, 6), dtype)
    labels[1:3, 2:5] = 4
    labels[4:6, 0:1] = 9
    crops = object_crops(ramp((1, 6, 6)), labels)
    assert crops.labels.tolist() == [4, 9]
    assert crops.boxes.tolist() == [[0, 1, 5, 6], [4, -1, 7, 2]]


def test_labels_above_65535_and_many_channels():
    image = ramp((11, 10, 10))
    labels = np.zeros((10, 10), np.int64)
    labels[2:6, 3:5] = 70000
    labels[7:9, 7:9] = 2**40
    crops = object_crops(image, labels, scale=1.0)
    assert crops.labels.tolist() == [70000, 2**40]
    assert crops.boxes.tolist() == [[2, 2, 6, 6], [7, 7, 9, 9]]
    np.testing.assert_array_equal(crops.pixels[0], image[:, 2:6, 2:6])
    assert crops.pixels[1].shape == (11, 2, 2)


@pytest.mark.parametrize("size", [None, 4])
def test_a_frame_without_objects_gives_no_crops(size):
    crops = object_crops(np.ones((3, 5, 5)), np.zeros((5, 5), np.uint16), size=size)
    assert crops.pixels == []
    assert crops.boxes.shape == (0, 4) and crops.boxes.dtype == np.int64
    assert crops.labels.shape == (0,)


def test_a_large_frame_with_many_objects_gives_every_crop():
    labels = np.zeros((2048, 2048), np.uint32)
    for index in range(2000):
        y, x = divmod(index, 45)
        labels[y * 45 + 5 : y * 45 + 35, x * 45 + 5 : x * 45 + 35] = index + 1
    image = np.zeros((1, 2048, 2048), np.float32)
    crops = object_crops(image, labels, background="mask")  # one pass over the frame: about 0.3 s here
    y, x = 44 * 45 - 2, 19 * 45 - 2  # the last object: bbox rows from 44 * 45 + 5, 30 high, crop side 45
    assert len(crops.pixels) == 2000 and crops.boxes[-1].tolist() == [y, x, y + 45, x + 45]


@pytest.mark.parametrize(
    ("image", "labels", "message"),
    [
        (np.ones((5, 5)), np.zeros((5, 5), int), r"image must be \(c, y, x\), found shape \(5, 5\)"),
        (np.ones((1, 5, 6)), np.zeros((5, 5), int), r"labels must be \(y, x\) = \(5, 6\) .* found shape \(5, 5\)"),
        (np.ones((1, 5, 5)), np.zeros((5, 5)), "labels must be of an integer dtype, found float64"),
        (np.ones((1, 2, 2)), np.array([[0, -3], [1, 1]]), "labels must be >= 0, found -3"),
    ],
)
def test_bad_inputs_are_contract_errors(image, labels, message):
    with pytest.raises(ContractError, match=message):
        object_crops(image, labels)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 0}, "crop size must be an integer >= 1 or None, found 0"),
        ({"size": 2.5}, "crop size must be an integer >= 1 or None, found 2.5"),
        ({"scale": 0}, "crop scale must be a number > 0, found 0"),
        ({"scale": float("nan")}, "crop scale must be a number > 0, found nan"),
        ({"background": "blur"}, "background must be one of .*'keep', 'mask'.*, found 'blur'"),
    ],
)
def test_bad_crop_options_are_param_errors(options, message):
    with pytest.raises(ParamError, match=message):
        object_crops(np.ones((1, 3, 3)), np.ones((3, 3), int), **options)


def test_tile_crops_cover_the_frame_row_major_with_padded_edge_tiles():
    image = ramp((2, 5, 7))
    crops = tile_crops(image, 3)
    assert crops.boxes.tolist() == [
        [0, 0, 3, 3],
        [0, 3, 3, 6],
        [0, 6, 3, 9],
        [3, 0, 6, 3],
        [3, 3, 6, 6],
        [3, 6, 6, 9],
    ]
    assert crops.labels.tolist() == [0] * 6 and crops.labels.dtype == np.int64
    np.testing.assert_array_equal(crops.pixels[0], image[:, :3, :3])
    corner = np.zeros((2, 3, 3), np.float32)
    corner[:, :2, :1] = image[:, 3:, 6:]
    np.testing.assert_array_equal(crops.pixels[-1], corner)


def test_a_tile_larger_than_the_frame_is_one_padded_tile():
    crops = tile_crops(ramp((1, 2, 2)), 4)
    assert crops.boxes.tolist() == [[0, 0, 4, 4]] and crops.pixels[0].sum() == 1 + 2 + 3 + 4


@pytest.mark.parametrize("tile", [0, -2, 1.5, True])
def test_bad_tile_sides_are_param_errors(tile):
    with pytest.raises(ParamError, match=f"tile size must be an integer >= 1, found {tile!r}"):
        tile_crops(np.ones((1, 4, 4)), tile)


def test_tile_and_frame_crops_check_the_image_shape():
    for crop in (frame_crop, lambda image: tile_crops(image, 2)):
        with pytest.raises(ContractError, match=r"image must be \(c, y, x\), found shape \(1, 1, 4, 4\)"):
            crop(np.ones((1, 1, 4, 4)))


def test_frame_crop_is_the_whole_frame_as_float32():
    image = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    crops = frame_crop(image)
    assert crops.boxes.tolist() == [[0, 0, 3, 4]] and crops.labels.tolist() == [0]
    assert crops.pixels[0].dtype == np.float32
    np.testing.assert_array_equal(crops.pixels[0], image)


def test_percentile_normalisation_is_per_channel_and_unclipped():
    channel = np.linspace(0, 100, 101)
    image = np.stack([channel, channel * 600 + 5]).astype(np.uint16)
    out = normalize(image, low=10, high=90)
    assert out.dtype == np.float32 and out.shape == (2, 101)
    expected = (channel - 10) / 80
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out[1], expected, rtol=1e-6, atol=1e-7)
    assert out.min() < 0 and out.max() > 1


def test_zscore_and_none():
    image = np.array([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 10.0], [10.0, 30.0]]])
    out = normalize(image, "zscore")
    np.testing.assert_allclose(out.reshape(2, -1).mean(axis=1), 0, atol=1e-7)
    np.testing.assert_allclose(out.reshape(2, -1).std(axis=1), 1, rtol=1e-6)
    plain = normalize(image.astype(np.int32), "none")
    assert plain.dtype == np.float32
    np.testing.assert_array_equal(plain, image)


def test_zscore_is_computed_in_float64():
    values = (3e7 + np.random.default_rng(0).integers(0, 4, 10000) * 2).astype(np.float32)  # float32 maths: off by 1
    exact = (values.astype(np.float64) - values.mean(dtype=np.float64)) / values.std(dtype=np.float64)
    np.testing.assert_allclose(normalize(values[None], "zscore")[0], exact, atol=1e-5)


@pytest.mark.parametrize("method", ["percentile", "zscore"])
def test_a_constant_channel_normalises_to_zeros(method):
    image = np.stack([np.full((4, 4), 7.0), np.arange(16.0).reshape(4, 4)])
    out = normalize(image, method)
    assert (out[0] == 0).all() and out[1].std() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "minmax"}, "normalize must be one of .*'percentile'.*, found 'minmax'"),
        ({"low": 50, "high": 50}, "percentiles must satisfy 0 <= low < high <= 100, found low=50 high=50"),
        ({"low": 1, "high": 101}, "found low=1 high=101"),
    ],
)
def test_bad_normalisation_options_are_param_errors(options, message):
    with pytest.raises(ParamError, match=message):
        normalize(np.ones((1, 3)), **options)


def test_normalize_needs_a_channel_axis():
    with pytest.raises(ContractError, match=r"normalize needs a \(c, \.\.\.\) array, found a 0-d array"):
        normalize(np.float32(3))


@settings(max_examples=60, deadline=None)
@given(
    image=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=3, max_side=6),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    method=st.sampled_from(["percentile", "zscore", "none"]),
)
def test_normalize_of_finite_input_is_nan_free(image, method):
    out = normalize(image, method)
    assert out.shape == image.shape and out.dtype == np.float32
    assert not np.isnan(out).any()


def test_channel_views_each_replicates_every_channel():
    crop = ramp((2, 3, 4))
    views = channel_views(crop)
    assert views.shape == (2, 3, 3, 4) and views.dtype == np.float32
    for view, channel in zip(views, crop):
        assert all((plane == channel).all() for plane in view)


def test_channel_views_triplets_and_a_chosen_triplet():
    crop = ramp((6, 2, 2))
    np.testing.assert_array_equal(channel_views(crop, "triplets"), crop.reshape(2, 3, 2, 2))
    chosen = channel_views(crop, [5, 0, 2])
    assert chosen.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(chosen[0], crop[[5, 0, 2]])


@pytest.mark.parametrize(
    ("crop", "channels", "error", "message"),
    [
        (np.ones((4, 2, 2)), "triplets", ContractError, "a multiple of 3, found c=4"),
        (np.ones((3, 2, 2)), [0, 1, 3], ContractError, r"channels \[0, 1, 3\] asked for, .* c=3 \(0..2\)"),
        (np.ones((3, 2, 2)), [0, -1, 2], ContractError, r"channels \[0, -1, 2\] asked for, .* c=3"),
        (np.ones((2, 2)), "each", ContractError, r"a \(c, h, w\) crop, found shape \(2, 2\)"),
        (np.ones((3, 2, 2)), "rgb", ParamError, "found 'rgb'"),
        (np.ones((3, 2, 2)), [0, 1], ParamError, r"a list of 3 channel indices, found \[0, 1\]"),
        (np.ones((3, 2, 2)), [0, 1.0, 2], ParamError, "found"),
    ],
)
def test_bad_channel_views(crop, channels, error, message):
    with pytest.raises(error, match=message):
        channel_views(crop, channels)


@settings(max_examples=60, deadline=None)
@given(
    labels=hnp.arrays(np.uint32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 5)),
    channels=st.integers(1, 4),
    size=st.one_of(st.none(), st.integers(1, 9)),
    scale=st.floats(0.2, 3.0),
    background=st.sampled_from(["keep", "mask"]),
)
def test_every_crop_inside_the_frame_is_the_region_its_box_names(labels, channels, size, scale, background):
    image = ramp((channels, *labels.shape))
    crops = object_crops(image, labels, size=size, scale=scale, background=background)
    assert crops.labels.tolist() == sorted(set(np.unique(labels).tolist()) - {0})
    for crop, box, label in zip(crops.pixels, crops.boxes, crops.labels):
        y0, x0, y1, x1 = box.tolist()
        assert y1 - y0 == x1 - x0 == crop.shape[1] == crop.shape[2]
        rows, cols = np.nonzero(labels == label)
        centre = (rows.min() + (rows.max() + 1 - rows.min()) // 2, cols.min() + (cols.max() + 1 - cols.min()) // 2)
        assert (y0 + (y1 - y0) // 2, x0 + (x1 - x0) // 2) == centre
        if size is None:
            assert y1 - y0 == max(1, int(np.ceil(round(scale * max(np.ptp(rows) + 1, np.ptp(cols) + 1), 6))))
        if y0 >= 0 and x0 >= 0 and y1 <= labels.shape[0] and x1 <= labels.shape[1]:
            region = image[:, y0:y1, x0:x1]
            if background == "mask":
                region = region * (labels[y0:y1, x0:x1] == label)
            np.testing.assert_array_equal(crop, region)
