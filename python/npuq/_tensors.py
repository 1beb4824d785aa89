"""numpy / torch at the boundary: inputs become numpy views, outputs take the caller's type back.

torch is never imported here; a tensor is recognised through ``sys.modules`` so that numpy-only users
do not pay for it.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np


class LayoutWarning(UserWarning):
    """An input had to be copied into the layout the kernels compute in (NHWC / channels_last)."""


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside npuq, so that a warning points at the user's call."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "npuq":
        frame, level = frame.f_back, level + 1
    return level


def _torch():
    return sys.modules.get("torch")


def is_torch(x) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _check_dtype(arr_dtype, expected, name, hint=""):
    if arr_dtype != expected:
        raise TypeError(f"{name} must have dtype {np.dtype(expected).name}, got {arr_dtype}{hint}")


def _torch_to_numpy(t, name):
    torch = _torch()
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on device {t.device}; npuq.ops runs on CPU tensors (call .cpu())")
    if t.requires_grad:
        t = t.detach()
    if t.is_quantized:
        raise TypeError(f"{name} is a quantized torch tensor; pass its int_repr() and its parameters")
    if t.dtype not in (torch.int8, torch.uint8, torch.int32):
        # numpy cannot view every torch dtype; report it with torch's name.
        raise TypeError(f"{name} has dtype {t.dtype}; expected an integer tensor")
    return t.numpy()


def array(x, name: str, dtype, ndim: int | None = None, hint: str = "") -> np.ndarray:
    """A C-contiguous numpy array of ``dtype`` from a numpy array, torch tensor or DLPack object.

    Non-contiguous inputs are copied into C order; nothing is ever cast to another dtype.
    """
    if is_torch(x):
        arr = _torch_to_numpy(x, name)
    elif isinstance(x, np.ndarray):
        arr = x
    elif hasattr(x, "__dlpack__"):
        arr = np.from_dlpack(x)
    else:
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(x).__name__}")
    _check_dtype(arr.dtype, np.dtype(dtype), name, hint)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: shape {tuple(arr.shape)}")
    if not arr.flags.c_contiguous or not arr.flags.aligned:
        arr = np.ascontiguousarray(arr)
        if not arr.flags.aligned:  # ascontiguousarray keeps a view when already contiguous
            arr = arr.copy()
    return arr


def activation(x, name: str = "x") -> tuple[np.ndarray, bool]:
    """An int8 activation as an NHWC numpy array, and whether it came from torch.

    torch tensors keep torch's (N, C, H, W) shape and must be channels_last in memory to be used
    without a copy; a contiguous NCHW tensor is copied with a :class:`LayoutWarning`.
    """
    if not is_torch(x):
        return array(x, name, np.int8, ndim=4), False
    torch = _torch()
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.dtype != torch.int8:
        raise TypeError(f"{name} must have dtype torch.int8, got {x.dtype}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        warnings.warn(
            f"{name} is not in torch.channels_last memory format; npuq copies it into NHWC. Convert once "
            "with x.contiguous(memory_format=torch.channels_last) to avoid the copy on every call.",
            LayoutWarning,
            stacklevel=_caller_stacklevel(),
        )
        x = x.contiguous(memory_format=torch.channels_last)
    nhwc = x.permute(0, 2, 3, 1)  # a C-contiguous view of channels_last memory
    return array(nhwc, name, np.int8, ndim=4), True


def conv_weight(w, name: str = "weight") -> np.ndarray:
    """Conv weights as OHWI numpy: torch's (C_out, C_in/g, KH, KW) is permuted (weights are packed once)."""
    hint = " (quantize the weights to int8 in [-127, 127] first)"
    if is_torch(w):
        if w.dim() != 4:
            raise ValueError(f"{name} must be a 4-D (C_out, C_in/groups, KH, KW) tensor, got shape {tuple(w.shape)}")
        return array(w.permute(0, 2, 3, 1), name, np.int8, ndim=4, hint=hint)
    return array(w, name, np.int8, ndim=4, hint=hint)


def activation_out(arr: np.ndarray, to_torch: bool):
    """NHWC numpy result back to the caller's type: torch gets (N, C, H, W) in channels_last memory."""
    if not to_torch:
        return arr
    return _torch().from_numpy(arr).permute(0, 3, 1, 2)


def plain_out(arr: np.ndarray, to_torch: bool):
    return _torch().from_numpy(arr) if to_torch else arr
