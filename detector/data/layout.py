"""Tensor layouts a batch of images may arrive in, and the one conversion to the model's channels-first order.

The layout is said, never guessed from sizes: a 3x3-pixel RGB image has the same shape in both orders.
``NCHW`` (the default) is [N, C, H, W]; ``NHWC`` is [N, H, W, C], as numpy, OpenCV and PIL hold images and
cameras deliver frames. A single-channel model also takes [N, H, W] in either layout. Feature vectors ([N, D])
have no channel axis: the layout does not apply to them. Numpy only (the client imports this module).
"""

from __future__ import annotations

import numpy as np

from detector.errors import InvalidInput

LAYOUTS = ("NCHW", "NHWC")


def accepted_shapes(sample_shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """Every (layout, sample shape without N) a model of ``sample_shape`` takes."""
    if len(sample_shape) != 3:
        return [("NCHW", tuple(sample_shape))]
    c, h, w = sample_shape
    out = [("NCHW", (c, h, w)), ("NHWC", (h, w, c))]
    if c == 1:
        out += [("NCHW", (h, w)), ("NHWC", (h, w))]
    return out


def describe_accepted(sample_shape: tuple[int, ...]) -> str:
    """The accepted shapes in words, for error messages: '[N, 1, 28, 28] (NCHW), [N, 28, 28, 1] (NHWC), ...'."""
    if len(sample_shape) != 3:  # vectors: no layout to name
        return f"[N, {', '.join(map(str, sample_shape))}]"
    seen, parts = set(), []
    for layout, shape in accepted_shapes(sample_shape):
        if shape in seen:  # [N, H, W] is the same in both layouts
            continue
        seen.add(shape)
        label = "either layout" if len(shape) == 2 else layout
        parts.append(f"[N, {', '.join(map(str, shape))}] ({label})")
    return ", ".join(parts)


def check_layout(layout: str) -> str:
    """``layout`` itself, or InvalidInput naming the layouts there are."""
    if layout not in LAYOUTS:
        raise InvalidInput(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    return layout


def to_channels_first(batch: np.ndarray, layout: str, sample_shape: tuple[int, ...]) -> np.ndarray:
    """``batch`` in ``layout`` as (N, *sample_shape), or InvalidInput naming every accepted shape; feature vectors
    ignore the layout. A view, never a copy: NHWC comes back transposed, and the one copy is made where requests
    are gathered into a batch or converted to model space, as for any request."""
    check_layout(layout)
    sample_shape = tuple(sample_shape)
    got = tuple(batch.shape[1:])
    if len(sample_shape) == 3:
        c, h, w = sample_shape
        if c == 1 and got == (h, w):
            return batch.reshape(batch.shape[0], 1, h, w)
        if layout == "NHWC" and got == (h, w, c):
            return batch.transpose(0, 3, 1, 2)
    if got == sample_shape and (layout == "NCHW" or len(sample_shape) != 3):
        return batch
    hint = ""
    if len(sample_shape) == 3 and layout == "NCHW" and got == (*sample_shape[1:], sample_shape[0]):
        hint = ": these look channels-last, send layout NHWC"
    elif len(sample_shape) == 3 and layout == "NHWC" and got == sample_shape:
        hint = ": these look channels-first, send layout NCHW (the default)"
    given = f" as {layout}" if len(sample_shape) == 3 else ""
    raise InvalidInput(f"samples must have shape {describe_accepted(sample_shape)}; got {list(batch.shape)}{given}{hint}")
