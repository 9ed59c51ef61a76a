"""The only place protobuf messages are built or read: Tensor <-> ndarray, ScoreRequest, ScoreResult ->
SampleResults, ModelInfo."""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from detector.data.layout import accepted_shapes, check_layout
from detector.errors import InvalidInput
from detector.v1 import detector_pb2 as pb

if TYPE_CHECKING:  # the client imports this module: keep torch out of its start-up
    from detector.config import ServeConfig
    from detector.scoring.scorer import Scorer, ScoreResult

_DTYPES = {pb.UINT8: np.dtype("<u1"), pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2")}
_ENUM_OF = {np.dtype("uint8"): pb.UINT8, np.dtype("float32"): pb.FLOAT32, np.dtype("float16"): pb.FLOAT16}
MAX_DIMS = 8


class Unparsable:
    """Stands in for a request whose bytes do not parse (bad wire format, non-UTF-8 strings), so the
    servicer answers INVALID_ARGUMENT and counts it instead of gRPC answering UNKNOWN."""

    def __init__(self, reason: str):
        self.reason = reason


def lenient_parser(message_type):
    """A request deserializer that returns Unparsable instead of raising."""
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            detail = str(exc).rsplit(": ", 1)[-1]  # protobuf repeats the type name before the reason
            return Unparsable(f"request does not parse as {message_type.DESCRIPTOR.full_name}: {detail}")
    return parse


def parsed(request):
    """The request itself, or InvalidInput if its bytes did not parse."""
    if isinstance(request, Unparsable):
        raise InvalidInput(request.reason)
    return request


def tensor_to_array(tensor: pb.Tensor) -> np.ndarray:
    """Validate and view a raw tensor as (N, ...) numpy; FLOAT16 is widened to float32."""
    if tensor.dtype not in _DTYPES:
        name = pb.DataType.Name(tensor.dtype) if tensor.dtype in pb.DataType.values() else str(tensor.dtype)
        raise InvalidInput(f"samples.dtype {name} is not supported: use UINT8, FLOAT32 or FLOAT16")
    shape = list(tensor.shape)
    if not shape:
        raise InvalidInput("samples.shape is empty: give [N, ...sample shape]")
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"samples.shape has {len(shape)} dimensions; at most {MAX_DIMS}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"samples.shape {shape} has a negative dimension")
    dtype = _DTYPES[tensor.dtype]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: huge dims cannot overflow
    if len(tensor.data) != expected:
        raise InvalidInput(f"samples.data holds {len(tensor.data)} bytes; shape {shape} of {pb.DataType.Name(tensor.dtype)}"
                           f" needs {expected}")
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    if dtype == np.float16:
        array = array.astype(np.float32)
    return array


def tensor_layout(tensor: pb.Tensor) -> str:
    """The layout a tensor says it is in, by name ("NCHW", "NHWC"), or InvalidInput for a value no layout has."""
    if tensor.layout not in pb.Layout.values():
        raise InvalidInput(f"samples.layout {tensor.layout} is not a layout: use NCHW (0) or NHWC (1)")
    return pb.Layout.Name(tensor.layout)


def array_to_tensor(array: np.ndarray, layout: str = "NCHW") -> pb.Tensor:
    array = np.ascontiguousarray(array)
    if array.dtype not in _ENUM_OF:
        raise InvalidInput(f"arrays of dtype {array.dtype} cannot be sent: use uint8, float32 or float16")
    return pb.Tensor(shape=list(array.shape), dtype=_ENUM_OF[array.dtype],
                     layout=pb.Layout.Value(check_layout(layout)),
                     data=array.astype(array.dtype.newbyteorder("<")).tobytes())


def score_request(samples: np.ndarray, sample_ids: Sequence[str] | None = None, request_id: str | None = None,
                  diagnostics: Sequence[str] = (), layout: str = "NCHW", maps: bool = False) -> pb.ScoreRequest:
    """A ScoreRequest for ``samples`` given in ``layout``; a random request id when none is given."""
    return pb.ScoreRequest(request_id=request_id or uuid.uuid4().hex, samples=array_to_tensor(samples, layout),
                           sample_ids=list(sample_ids or []), diagnostics=list(diagnostics), return_anomaly_maps=maps)


def model_info_message(scorer: Scorer, cfg: ServeConfig, diagnostics: Sequence[str],
                       max_batch_samples: int) -> pb.ModelInfo:
    """What GetModelInfo tells a client about the served model and the server's limits (``max_batch_samples``: the
    one in force, tuned at start-up)."""
    cal = scorer.calibration
    return pb.ModelInfo(
        model_version=scorer.model_version, input_shape=list(scorer.sample_shape),
        preferred_dtype=pb.UINT8 if scorer.input_dtype == "uint8" else pb.FLOAT32, primary_score="novelty",
        target_fpr=cal["novelty"].target_fpr if "novelty" in cal else 0.0,
        thresholds={k: c.threshold for k, c in cal.items()}, device=str(scorer.device),
        max_batch_samples=max_batch_samples, max_request_samples=cfg.max_request_samples,
        data_kind=scorer.kind, diagnostics=list(diagnostics), accepted_shapes=accepted_shapes_message(scorer.sample_shape))


def accepted_shapes_message(sample_shape: tuple[int, ...]) -> list[pb.AcceptedShape]:
    """ModelInfo.accepted_shapes for a model of ``sample_shape``."""
    return [pb.AcceptedShape(layout=pb.Layout.Value(layout), shape=list(shape))
            for layout, shape in accepted_shapes(sample_shape)]


def result_to_response(request_id: str, model_version: str, result: ScoreResult, sample_ids) -> pb.ScoreResponse:
    s, p, novel, t = result.scores, result.p_values, result.novel, result.thresholds
    n = len(result)
    ids = list(sample_ids) if len(sample_ids) else [str(i) for i in range(n)]
    missing = [math.nan] * n  # a diagnostic not asked for
    columns = {
        "novelty_score": s["novelty"].tolist(), "p_value": p["novelty"].tolist(), "is_novel": novel["novelty"].tolist(),
        "neg_elbo": s["neg_elbo"].tolist(), "recon_error": s["recon_error"].tolist(),
        "latent_distance": s["latent_distance"].tolist(),
        "iw_nll": s["iw_nll"].tolist() if "iw_nll" in s else missing,
        "complexity_corrected": s["complexity_corrected"].tolist() if "complexity_corrected" in s else missing,
    }
    if result.resample_weight is not None:
        columns["resample_weight"] = result.resample_weight.tolist()
        columns["resample"] = result.resample.tolist()
    constant = {"threshold": t["novelty"], "neg_elbo_threshold": t["neg_elbo"],
                "recon_error_threshold": t["recon_error"]}
    response = pb.ScoreResponse(request_id=request_id, model_version=model_version)
    names = list(columns)
    for i, row in enumerate(zip(*columns.values())):
        response.results.add(sample_id=ids[i], **constant, **dict(zip(names, row)))
    if result.anomaly_maps is not None:
        for sample, image in zip(response.results, result.anomaly_maps):
            sample.anomaly_map.CopyFrom(array_to_tensor(np.ascontiguousarray(image, dtype=np.float32)))
    return response


def response_to_columns(response: pb.ScoreResponse) -> dict[str, np.ndarray]:
    """Client side: a response as named numpy columns."""
    fields = [f.name for f in pb.SampleResult.DESCRIPTOR.fields if f.name != "sample_id" and f.message_type is None]
    cols = {name: np.array([getattr(r, name) for r in response.results]) for name in fields}
    cols["sample_id"] = np.array([r.sample_id for r in response.results], dtype=object)
    if response.results and response.results[0].HasField("anomaly_map"):  # (N, H, W) float32
        cols["anomaly_map"] = np.stack([tensor_to_array(r.anomaly_map) for r in response.results])
    return cols
