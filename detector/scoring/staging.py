"""Moving checked batches to the scoring device, ahead of their compute.

On CUDA a batch goes into one of two page-locked host buffers, reused batch after batch (allocated once, grown only
when a larger batch arrives), and crosses on a copy stream of its own with a non-blocking copy: the server stages
batch n+1 while batch n computes (serving/batcher.py), and the compute waits only for its own batch's copy. uint8
pixels cross as uint8, a quarter of float32's bytes, and become model-space floats on the device. On the CPU
nothing is copied: a staged batch becomes the model-space tensor (``to_model_space``) when the compute asks for it,
in the scoring thread, as before staging existed.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from detector.data.sampleset import to_model_space

SLOTS = 2  # pinned host buffers: one whose copy may still be running, one being filled


class Staged:
    """A checked batch and its copy on the scoring device. Slices stay staged (the rows of the same copy)."""

    __slots__ = ("samples", "_x", "_ready", "_input_shape")

    def __init__(self, samples: np.ndarray, x: torch.Tensor | None, ready: torch.cuda.Event | None,
                 input_shape: tuple[int, ...]):
        self.samples = samples  # the checked stored-format samples (the CPU codec and the maps' inputs read them)
        self._x = x  # None on the CPU until ``tensor`` is called
        self._ready = ready  # recorded on the copy stream after the copy; None on the CPU
        self._input_shape = input_shape

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, rows: slice) -> "Staged":
        x = None if self._x is None else self._x[rows]
        return Staged(self.samples[rows], x, self._ready, self._input_shape)

    def tensor(self) -> torch.Tensor:
        """The batch on the device, in model space, safe to use on the current stream."""
        if self._x is None:
            self._x = _model_space_tensor(self.samples, self._input_shape)
        elif self._ready is not None:
            stream = torch.cuda.current_stream(self._x.device)
            stream.wait_event(self._ready)  # the device waits for the copy; the host does not
            self._x.record_stream(stream)  # its memory, allocated on the copy stream, is in use on this one too
        return self._x


def _model_space_tensor(samples: np.ndarray, input_shape: tuple[int, ...]) -> torch.Tensor:
    x = np.ascontiguousarray(to_model_space(samples))
    if not x.flags.writeable:  # views of request bytes are read-only; torch wants its own copy
        x = x.copy()
    return torch.from_numpy(x).reshape(x.shape[0], *input_shape)


class DeviceStager:
    """Stages batches for one device; thread-safe (the server stages in one thread and scores in another)."""

    def __init__(self, device: torch.device, input_shape: tuple[int, ...]):
        self.device = device
        self.input_shape = tuple(input_shape)
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._lock = threading.Lock()
        self._buffers: list[torch.Tensor | None] = [None] * SLOTS  # pinned bytes
        self._copied: list[torch.cuda.Event | None] = [None] * SLOTS  # the last copy out of each buffer
        self._next = 0

    def stage(self, samples: np.ndarray) -> Staged:
        """``samples``: checked, stored-format (uint8 pixels or floats), (B, *sample_shape)."""
        if self._stream is None:
            return Staged(samples, None, None, self.input_shape)
        dtype = np.uint8 if samples.dtype == np.uint8 else np.float32
        with self._lock:
            slot = self._next
            self._next = (slot + 1) % SLOTS
            if self._copied[slot] is not None:
                self._copied[slot].synchronize()  # the copy that last read this buffer has finished
            host = self._host_view(slot, samples.shape, dtype)
            np.copyto(host.numpy(), samples, casting="same_kind")
            with torch.cuda.stream(self._stream):
                x = host.to(self.device, non_blocking=True)
                x = x.float().div_(255.0) if dtype == np.uint8 else x
                ready = torch.cuda.Event()
                ready.record(self._stream)
            self._copied[slot] = ready
        return Staged(samples, x.reshape(len(samples), *self.input_shape), ready, self.input_shape)

    def _host_view(self, slot: int, shape: tuple[int, ...], dtype) -> torch.Tensor:
        """A view of pinned buffer ``slot`` as ``shape`` of ``dtype``, the buffer grown (reallocated) only when this
        batch does not fit."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buffer = self._buffers[slot]
        if buffer is None or buffer.numel() < nbytes:
            buffer = self._buffers[slot] = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return buffer[:nbytes].view(torch.uint8 if dtype == np.uint8 else torch.float32).view(shape)

    def buffer_addresses(self) -> list[int]:
        """Where the pinned buffers live (tests check they are reused, not reallocated per batch)."""
        return [b.data_ptr() for b in self._buffers if b is not None]
