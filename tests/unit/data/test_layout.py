"""Tensor layouts: the one conversion to channels-first, and the errors that name every accepted shape."""

from __future__ import annotations

import numpy as np
import pytest

from detector.data.layout import accepted_shapes, describe_accepted, to_channels_first
from detector.errors import InvalidInput


def test_channels_last_becomes_channels_first_without_a_copy():
    x = np.arange(2 * 3 * 5 * 4, dtype=np.uint8).reshape(2, 3, 5, 4)  # N, C, H, W with H != W
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out = to_channels_first(nhwc, "NHWC", (3, 5, 4))
    np.testing.assert_array_equal(out, x)
    assert np.shares_memory(out, nhwc)
    assert to_channels_first(x, "NCHW", (3, 5, 4)) is x


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_single_channel_models_take_n_h_w_in_either_layout(layout):
    x = np.random.default_rng(0).integers(0, 256, (4, 1, 6, 7), dtype=np.uint8)
    np.testing.assert_array_equal(to_channels_first(x[:, 0], layout, (1, 6, 7)), x)
    if layout == "NHWC":
        np.testing.assert_array_equal(to_channels_first(x.transpose(0, 2, 3, 1), layout, (1, 6, 7)), x)


def test_vectors_ignore_the_layout():
    v = np.zeros((3, 8), np.float32)
    assert to_channels_first(v, "NHWC", (8,)) is v
    with pytest.raises(InvalidInput, match=r"must have shape \[N, 8\]; got \[3, 9\]"):
        to_channels_first(np.zeros((3, 9), np.float32), "NCHW", (8,))


@pytest.mark.parametrize("shape,layout,message", [
    ((2, 5, 4, 3), "NCHW", "look channels-last, send layout NHWC"),
    ((2, 3, 5, 4), "NHWC", "look channels-first, send layout NCHW"),
    ((2, 5, 4), "NCHW", r"got \[2, 5, 4\] as NCHW"),  # [N, H, W] only for one channel
    ((2, 3, 4, 5), "NCHW", r"\[N, 3, 5, 4\] \(NCHW\), \[N, 5, 4, 3\] \(NHWC\); got"),
])
def test_a_mismatch_names_the_expected_shape_in_both_layouts(shape, layout, message):
    with pytest.raises(InvalidInput, match=message):
        to_channels_first(np.zeros(shape, np.uint8), layout, (3, 5, 4))


def test_unknown_layout_is_refused():
    with pytest.raises(InvalidInput, match="unknown layout 'CHWN'"):
        to_channels_first(np.zeros((1, 1, 2, 2), np.uint8), "CHWN", (1, 2, 2))


def test_accepted_shapes_listed_once_each():
    assert accepted_shapes((3, 64, 48)) == [("NCHW", (3, 64, 48)), ("NHWC", (64, 48, 3))]
    assert describe_accepted((1, 28, 28)) == "[N, 1, 28, 28] (NCHW), [N, 28, 28, 1] (NHWC), [N, 28, 28] (either layout)"
    assert accepted_shapes((16,)) == [("NCHW", (16,))]
