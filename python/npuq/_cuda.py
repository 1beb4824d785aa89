"""Device arrays at the boundary of the CUDA kernels (docs/cuda.md).

Accepted device inputs: torch CUDA tensors (read in place through ``data_ptr()``) and any object with
``__cuda_array_interface__`` (CuPy, Numba, :class:`npuq.CudaArray`). Outputs take the input's kind back:
a torch tensor on the input's device for torch, an ``npuq.CudaArray`` otherwise. Work is queued on the
input's stream: torch's current stream of that device, or the stream the interface names (the legacy
default stream when it names none).

torch is never imported here; a tensor is recognised through ``sys.modules``.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np

from npuq import _C

_CudaArray = getattr(_C, "CudaArray", None)  # absent from builds without CUDA

_TORCH_DTYPES = {"int8": "int8", "uint8": "uint8", "int32": "int32", "float32": "float32", "float64": "float64"}


def info() -> dict:
    """``{"built", "devices", "reason", "names", "capabilities", ...}`` of this build and machine."""
    return dict(_C.cuda_info())


def available() -> bool:
    """Whether this build has the CUDA kernels and a GPU is visible."""
    i = info()
    return bool(i["built"]) and i["devices"] > 0


def unusable_reason(i: dict, device: int) -> str | None:
    """Why this build's kernels cannot run on visible device ``device`` (a GPU outside the architectures
    the build has code for), or None when they can. ``i`` is :func:`info`'s dictionary."""
    errors = i.get("kernel_image_errors") or []
    if device >= len(errors) or errors[device] is None:
        return None
    names, caps = i.get("names") or [], i.get("capabilities") or []
    what = f"CUDA device {device}"
    if device < len(names) and device < len(caps):
        major, minor = caps[device]
        what += f" ({names[device]}, compute capability {major}.{minor})"
        arch = f"{major}{minor}"
    else:
        arch = "native"
    return (
        f"{what} cannot run npuq's CUDA kernels ({errors[device]}): this build has {i.get('architectures_text')}; "
        f"build npuq for it from source: NPUQ_CUDA_ARCHS={arch} pip install --no-binary npuq npuq (docs/cuda.md)"
    )


def status_lines(i: dict, usable: str = "usable") -> list[str]:
    """What ``npuq info`` and ``npuq selftest`` print of the build's CUDA part and each visible GPU (``i``:
    :func:`info`'s dictionary); a GPU this build's kernels run on is described by ``usable``."""
    if not i["built"]:
        return [f"CUDA: not built ({i.get('reason') or 'no CUDA toolkit at build time'}); the CPU kernels run"]
    lines = [f"CUDA: built with {i.get('architectures_text') or 'unknown architectures'}"]
    if i["devices"] == 0:
        lines.append(f"CUDA: no usable device ({i.get('reason') or 'no GPU visible'}); the CPU kernels run")
    for d, name in enumerate(i.get("names") or []):
        major, minor = i["capabilities"][d]
        reason = unusable_reason(i, d)
        lines.append(f"CUDA device {d}: {name} (compute capability {major}.{minor}): {reason or usable}")
    return lines


def require(device: int | None = None) -> int:
    """The device index to run on; RuntimeError saying why when the GPU path cannot run."""
    i = info()
    if not i["built"]:
        raise RuntimeError(
            f"device='cuda' needs npuq's CUDA kernels, but {i['reason']}; rebuild npuq on a machine "
            "with the CUDA toolkit (nvcc) to get them"
        )
    if i["devices"] == 0:
        raise RuntimeError(f"device='cuda' was asked for, but no CUDA GPU is available ({i['reason']})")
    device = 0 if device is None else int(device)
    if not 0 <= device < i["devices"]:
        raise ValueError(f"CUDA device {device} does not exist: {i['devices']} device(s) are visible")
    reason = unusable_reason(i, device)
    if reason is not None:
        raise RuntimeError(reason)
    return device


def parse_device(device) -> tuple[str, int | None]:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch.device -> ("cpu", None) / ("cuda", N or None)."""
    text = str(device)
    if text == "cpu":
        return "cpu", None
    if text == "cuda":
        return "cuda", None
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _torch():
    return sys.modules.get("torch")


def is_torch_cuda(x) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor) and x.is_cuda


def is_device_array(x) -> bool:
    """A torch CUDA tensor or an object exposing ``__cuda_array_interface__``."""
    if is_torch_cuda(x):
        return True
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        return False
    return hasattr(x, "__cuda_array_interface__")


class DeviceView(NamedTuple):
    """What the kernels need of a device array: its pointer, shape (the layout the kernels see), dtype,
    device and stream, and the object that keeps the memory alive."""

    ptr: int
    shape: tuple
    dtype: np.dtype
    device: int
    stream: int
    owner: Any
    torch: bool

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _torch_stream(device: int) -> int:
    return int(_torch().cuda.current_stream(device).cuda_stream)


def view(x, name: str, dtype, ndim: int | None = None, *, nhwc_from_torch: bool = False) -> DeviceView:
    """Check a device array and describe it. ``nhwc_from_torch``: a torch (N, C, H, W) activation, which
    must be channels_last in memory (as on the CPU); its view is the NHWC memory order."""
    dtype = np.dtype(dtype)
    if is_torch_cuda(x):
        torch = _torch()
        if x.requires_grad:
            x = x.detach()
        got = str(x.dtype).replace("torch.", "")
        if got != dtype.name:
            raise TypeError(f"{name} must have dtype torch.{dtype.name}, got {x.dtype}")
        if nhwc_from_torch:
            if x.dim() != 4:
                raise ValueError(f"{name} must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
            if not x.is_contiguous(memory_format=torch.channels_last):
                if not x.is_contiguous():
                    raise ValueError(
                        f"{name} is a non-contiguous CUDA tensor (strides {x.stride()}); the CUDA "
                        "kernels read channels_last memory: pass "
                        "x.contiguous(memory_format=torch.channels_last)"
                    )
                import warnings

                from npuq._tensors import LayoutWarning, _caller_stacklevel

                warnings.warn(
                    f"{name} is not in torch.channels_last memory format; npuq copies it on the GPU. "
                    "Convert once with x.contiguous(memory_format=torch.channels_last) to avoid the "
                    "copy on every call.",
                    LayoutWarning,
                    stacklevel=_caller_stacklevel(),
                )
                x = x.contiguous(memory_format=torch.channels_last)
            n, c, h, w = x.shape
            shape = (n, h, w, c)
        else:
            if not x.is_contiguous():
                raise ValueError(
                    f"{name} is a non-contiguous CUDA tensor (shape {tuple(x.shape)}, strides "
                    f"{x.stride()}); pass {name}.contiguous()"
                )
            shape = tuple(x.shape)
        if ndim is not None and len(shape) != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
        device = x.device.index if x.device.index is not None else torch.cuda.current_device()
        return DeviceView(int(x.data_ptr()), shape, dtype, int(device), _torch_stream(device), x, True)

    if not hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"{name} must be a torch CUDA tensor or have __cuda_array_interface__, got {type(x).__name__}")
    cai = x.__cuda_array_interface__
    shape = tuple(int(d) for d in cai["shape"])
    got = np.dtype(cai["typestr"])
    if got != dtype:
        raise TypeError(f"{name} must have dtype {dtype.name}, got {got.name}")
    strides = cai.get("strides")
    if strides is not None:
        expect, step = [], got.itemsize
        for d in reversed(shape):
            expect.append(step)
            step *= max(d, 1)
        if tuple(strides) != tuple(reversed(expect)) and int(np.prod(shape)) > 1:
            raise ValueError(
                f"{name} is a non-contiguous device array (strides {tuple(strides)}); make it C-contiguous first"
            )
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {shape}")
    if int(np.prod(shape)) == 0:
        raise ValueError(f"{name} is empty: shape {shape}")
    ptr = int(cai["data"][0])
    device = getattr(x, "device", None)
    if not isinstance(device, int):
        device = _device_of(x)
    # 1 and 2 (the legacy and per-thread default streams) are also the runtime's own handles for them
    stream = int(cai.get("stream") or 0)
    return DeviceView(ptr, shape, got, int(device), stream, x, False)


def _device_of(x) -> int:
    """The device of a foreign array: CuPy and Numba say it; otherwise device 0."""
    dev = getattr(x, "device", None)
    for attr in ("id", "index"):
        if hasattr(dev, attr) and isinstance(getattr(dev, attr), int):
            return getattr(dev, attr)
    return 0


def empty(shape, dtype, like: DeviceView, *, nchw_from_nhwc: bool = False):
    """A new device array on ``like``'s device and stream: (object to return, its pointer).

    For torch, ``nchw_from_nhwc`` gives a (N, C, H, W) channels_last tensor whose memory is the NHWC
    ``shape``."""
    dtype = np.dtype(dtype)
    if like.torch:
        torch = _torch()
        tdt = getattr(torch, _TORCH_DTYPES[dtype.name])
        dev = torch.device("cuda", like.device)
        if nchw_from_nhwc:
            n, h, w, c = shape
            t = torch.empty((n, c, h, w), dtype=tdt, device=dev, memory_format=torch.channels_last)
        else:
            t = torch.empty(tuple(shape), dtype=tdt, device=dev)
        return t, int(t.data_ptr())
    arr = _CudaArray(list(shape), dtype.name, like.device, like.stream)
    return arr, int(arr.ptr)


def to_device(x: np.ndarray, device: int, stream: int = 0):
    """Copy a host array to a new :class:`npuq.CudaArray` on ``device``."""
    require(device)
    return _CudaArray.from_numpy(np.ascontiguousarray(x), device, stream)


def to_host(x) -> np.ndarray:
    """A device array (torch CUDA tensor or CudaArray) copied to a numpy array."""
    if is_torch_cuda(x):
        return x.detach().cpu().numpy()
    if isinstance(x, Borrowed) or (_CudaArray is not None and isinstance(x, _CudaArray)):
        return x.numpy()
    raise TypeError(f"not a device array: {type(x).__name__}")


class Borrowed:
    """Device memory of another object (a torch tensor, say) seen as a plain C-contiguous array with
    ``__cuda_array_interface__``: how the emulator runs on a torch input in NHWC without torch's
    (N, C, H, W) conventions. Keeps ``owner`` alive."""

    def __init__(self, ptr: int, shape, dtype, device: int, stream: int, owner):
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.device = int(device)
        self.stream = int(stream)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self._owner = owner

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "version": 3,
            "strides": None,
            "stream": self.stream or 1,
        }

    def reshape(self, shape):
        shape = list(shape)
        if -1 in shape:
            i = shape.index(-1)
            rest = int(np.prod([d for j, d in enumerate(shape) if j != i], dtype=np.int64))
            shape[i] = self.size // max(rest, 1)
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(f"cannot view {self.size} elements as shape {tuple(shape)}")
        return Borrowed(self.ptr, shape, self.dtype, self.device, self.stream, self._owner)

    def rows(self, lo: int, hi: int) -> "Borrowed":
        """Rows [lo, hi) of the first axis (the same memory)."""
        hi = min(hi, self.shape[0])
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        return Borrowed(
            self.ptr + lo * row, (hi - lo,) + self.shape[1:], self.dtype, self.device, self.stream, self._owner
        )

    def numpy(self) -> np.ndarray:
        host = np.empty(self.shape, self.dtype)
        _C.cuda_copy_to_host(host, self.ptr, self.device, self.stream)
        return host


def borrow(x, name: str, dtype) -> Borrowed:
    """Any device array as a :class:`Borrowed` C-contiguous array (torch tensors: their memory order must be
    their shape's C order)."""
    v = view(x, name, dtype)  # torch: requires x.is_contiguous()
    return Borrowed(v.ptr, v.shape, v.dtype, v.device, v.stream, v.owner)
