"""Protobuf <-> numpy at the edge of the server: tensors both ways, the layout field, results to messages and
back, unparsable bytes, and the retry pushback a refusal carries."""

from __future__ import annotations

import numpy as np
import pytest

from detector.data.synthetic import bars
from detector.errors import InvalidInput, Overloaded
from detector.scoring.scorer import Scorer
from detector.serving.grpc.converters import (array_to_tensor, lenient_parser, parsed, response_to_columns,
                                              result_to_response, tensor_layout, tensor_to_array)
from detector.serving.grpc.servicer import PUSHBACK_KEY, pushback
from detector.v1 import detector_pb2 as pb


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.uint8).reshape(2, 1, 3, 4),
    np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
])
def test_a_tensor_round_trips_exactly(array):
    back = tensor_to_array(pb.Tensor.FromString(array_to_tensor(array).SerializeToString()))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_float16_is_widened_and_the_layout_travels():
    tensor = array_to_tensor(np.full((2, 4, 4, 3), 0.5, np.float16), layout="NHWC")
    assert tensor_layout(tensor) == "NHWC"
    back = tensor_to_array(tensor)
    assert back.dtype == np.float32 and float(back.max()) == 0.5


@pytest.mark.parametrize("tensor, message", [
    (pb.Tensor(shape=[2, 3], dtype=pb.UINT8, data=b"\x00" * 5), "holds 5 bytes"),
    (pb.Tensor(shape=[], dtype=pb.UINT8, data=b""), "shape is empty"),
    (pb.Tensor(shape=[-1, 3], dtype=pb.UINT8, data=b""), "negative dimension"),
    (pb.Tensor(shape=[1] * 9, dtype=pb.UINT8, data=b"\x00"), "at most 8"),
    (pb.Tensor(shape=[1], dtype=99, data=b"\x00"), "dtype 99 is not supported"),
    (pb.Tensor(shape=[1 << 40, 1 << 40], dtype=pb.FLOAT32, data=b""), "needs"),  # no overflow, no allocation
])
def test_a_malformed_tensor_is_invalid_input_saying_what_is_wrong(tensor, message):
    with pytest.raises(InvalidInput, match=message):
        tensor_to_array(tensor)


def test_an_unknown_layout_value_is_invalid_input():
    with pytest.raises(InvalidInput, match="layout 7 is not a layout"):
        tensor_layout(pb.Tensor(layout=7))


def test_unparsable_bytes_become_invalid_input_not_an_exception_inside_grpc():
    request = lenient_parser(pb.ScoreRequest)(b"\xff\xff\xff")
    with pytest.raises(InvalidInput, match="does not parse as detector.v1.ScoreRequest"):
        parsed(request)
    good = pb.ScoreRequest(request_id="r")
    assert parsed(lenient_parser(pb.ScoreRequest)(good.SerializeToString())) == good


def test_a_result_becomes_one_message_per_sample_and_back_into_the_same_columns(bundle_path):

    scorer = Scorer.from_path(bundle_path, device="cpu")
    result = scorer.score(bars(3, size=16))
    response = result_to_response("req", scorer.model_version, result, ["a", "b", "c"])
    assert [r.sample_id for r in response.results] == ["a", "b", "c"]
    cols = response_to_columns(pb.ScoreResponse.FromString(response.SerializeToString()))
    np.testing.assert_allclose(cols["novelty_score"], result.scores["novelty"], rtol=1e-6)
    np.testing.assert_array_equal(cols["is_novel"], result.novel["novelty"])
    assert np.isnan(cols["iw_nll"]).all()  # a diagnostic not asked for is NaN, not 0
    assert (cols["threshold"] == result.thresholds["novelty"]).all()


def test_a_refusal_for_load_carries_the_standard_retry_pushback_and_others_do_not():
    assert pushback(Overloaded("busy", retry_after_s=0.25)) == ((PUSHBACK_KEY, "250"),)
    assert pushback(Overloaded("busy", retry_after_s=0.0001)) == ((PUSHBACK_KEY, "1"),)  # 0 would mean "now"
    assert pushback(Overloaded("stream reached its limit")) == ()
    assert pushback(InvalidInput("bad")) == ()
