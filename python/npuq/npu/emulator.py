"""The NPU emulator: runs an NPU program in the integer arithmetic of docs/arithmetic.md.

Every op goes through the native kernels of :mod:`npuq.ops` (packed once per program, OpenMP-threaded,
NHWC); max pooling, a pure comparison, is done in numpy. Which kernel runs an op, and how, is the op
table's (:mod:`npuq.npu.optable`: each kind's ``run``, ``run_cuda`` and ``pack``). Results do not depend
on the thread count or on how a data set is cut into batches: each image is computed independently and
every kernel is deterministic.

Needs numpy only (torch tensors are accepted as inputs). ``device="cuda"`` runs the same program with the
CUDA kernels (docs/cuda.md), bit for bit the same outputs; device inputs (torch CUDA tensors,
``__cuda_array_interface__`` arrays) are read in place and give device outputs.
"""

from __future__ import annotations

import math
import sys
from numbers import Integral

import numpy as np

from npuq import _C, _cuda, ops
from npuq.npu.optable import OP_TABLE, RunContext
from npuq.npu.program import MAX_OP_BYTES, Program, load_program, memory_plan, validate

# The memory of one native call. A batch is split so that its images' values and temporaries (the memory
# plan of docs/program.md 4) stay within BATCH_BYTES; a kernel whose threads each allocate scratch (the
# depthwise row ring) runs on fewer threads where they would together pass SCRATCH_BYTES. The loader bounds
# one image's needs (1 GiB), so one image always fits; results depend on neither split.
BATCH_BYTES = 2 << 30
SCRATCH_BYTES = MAX_OP_BYTES


class Emulator:
    """Run ``program`` on batches of images.

    Args:
        program: a :class:`~npuq.npu.program.Program` or the path of a program file.
        threads: threads of the native kernels (default: ``npuq.get_num_threads()``, all cores).
        batch_size: images per native call in :meth:`run` (bounds memory on big data sets; the result is
            the same for every value). Fewer where a call would need more than ``BATCH_BYTES`` (2 GiB).
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``: where the integer kernels run. On a GPU the
            weights are copied to the device once, here.

    ``run`` returns int8 outputs; ``logits`` their real values; ``predict`` the arg-max class;
    ``evaluate`` the top-1 accuracy on a labelled data set.
    """

    def __init__(
        self, program: Program | str, *, threads: int | None = None, batch_size: int = 500, device: str = "cpu"
    ):
        if not isinstance(program, Program):
            program = load_program(program)
        kind, index = _cuda.parse_device(device)
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.program = program
        self.shapes = validate(program)
        self._plan = memory_plan(program, self.shapes)
        self.threads = threads
        self.batch_size = int(batch_size)
        self._kernels = {
            op.name: OP_TABLE[op.kind].pack(op, program.rounding, program.overflow)
            for op in program.ops
            if OP_TABLE[op.kind].pack is not None
        }
        self.device = "cpu"
        self._device_index = None
        if kind == "cuda":
            self._device_index = _cuda.require(index)
            self.device = f"cuda:{self._device_index}"
            for op in program.ops:  # a layer's weights to the device now, not in the first batch
                if OP_TABLE[op.kind].layer:
                    k = self._kernels[op.name]
                    (k._conv if isinstance(k, ops.FullyConnected) else k).cuda_plan(self._device_index)

    # ---------------------------------------------------------------------------------- inputs
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-image shape of the int8 input, (H, W, C) or (K,)."""
        return self.shapes[self.program.input.name]

    def quantize_input(self, x, layout: str = "NCHW") -> np.ndarray:
        """Float images -> the program's int8 input (N, H, W, C), exactly as docs/quantization.md 5 says.

        ``x``: float numpy array or torch tensor of shape (N, C, H, W) (``layout="NCHW"``, as the torch
        model takes it) or (N, H, W, C) (``layout="NHWC"``).
        """
        arr = _float_array(x)
        spec = self.program.input
        want = self.input_shape
        if len(want) == 3:
            if layout not in ("NCHW", "NHWC"):
                raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
            nchw = (want[2], want[0], want[1])
            expect = nchw if layout == "NCHW" else want
            if arr.ndim != 4 or arr.shape[1:] != expect:
                raise ValueError(
                    f"x has shape {arr.shape}; the program takes {layout} images of shape "
                    f"(N, {', '.join(map(str, expect))})"
                )
            if layout == "NCHW":
                arr = arr.transpose(0, 2, 3, 1)
        elif arr.ndim != 2 or arr.shape[1:] != want:
            raise ValueError(f"x has shape {arr.shape}; the program takes (N, {want[0]})")
        if np.isnan(arr).any():
            raise ValueError("x contains NaN")
        v = arr.astype(np.float32) / np.float32(spec.scale)  # one float32 division per element
        t = np.trunc(v)
        with np.errstate(invalid="ignore"):  # inf - inf: NaN fraction, inf saturates below
            frac = v - t
        r = t + (frac >= 0.5) - (frac <= -0.5)
        r = np.clip(r, -256.0, 256.0).astype(np.int64)  # +-inf saturate
        return np.ascontiguousarray(np.clip(r + spec.zero_point, -128, 127).astype(np.int8))

    def _as_input(self, x, layout: str) -> tuple[np.ndarray, bool]:
        """``x`` as a numpy array and whether it is float (quantized batch by batch in :meth:`run`)."""
        if _is_torch(x):
            x = x.detach().cpu()
            x = x.float().numpy() if x.dtype.is_floating_point else x.numpy()
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array or a torch tensor, got {type(x).__name__}")
        if x.dtype.kind == "f":
            self.quantize_input(x[:0], layout)  # checks the shape and layout once, quantizes nothing
            return x, True
        if x.dtype != np.int8:
            raise TypeError(
                f"x has dtype {x.dtype}; give int8 quantized input (N, "
                f"{', '.join(map(str, self.input_shape))}) or float images"
            )
        if x.shape[1:] != self.input_shape or x.ndim != len(self.input_shape) + 1:
            raise ValueError(
                f"x has shape {x.shape}; the program's int8 input is (N, "
                f"{', '.join(map(str, self.input_shape))}) ({'NHWC' if len(self.input_shape) == 3 else 'NK'})"
            )
        return np.ascontiguousarray(x), False

    # ---------------------------------------------------------------------------------- running
    def run(
        self, x, *, capture: bool = False, threads: int | None = None, layout: str = "NCHW", progress: bool = False
    ):
        """Run the program. Returns the output op's int8 values (N, ...).

        ``x``: int8 quantized input (N, H, W, C), or float images (quantized first; ``layout`` says whether
        they are NCHW, the default, or NHWC). With ``capture=True`` returns ``(output, values)`` where
        ``values`` maps the input's and every op's name to its int8 values (NHWC / (N, K)).
        """
        if self._device_index is not None:
            return self._run_cuda(x, capture, layout, progress)
        arr, is_float = self._as_input(x, layout)
        n = arr.shape[0]
        if n == 0:
            raise ValueError("x holds no images (batch of size 0)")
        threads = self.threads if threads is None else threads
        step = self._images_per_call(capture)
        chunks = range(0, n, step)
        if progress:
            chunks = _progress(chunks, total=len(chunks), desc=f"emulating {self.program.model or 'program'}")
        outs, caps = [], []
        for lo in chunks:
            batch = arr[lo : lo + step]
            # float images are quantized a batch at a time: each image independently, so the bits are the
            # same as quantizing all at once, without data-set-sized temporaries
            xq = self.quantize_input(batch, layout) if is_float else batch
            values = self._run_batch(xq, threads, keep_all=capture)
            outs.append(values[self.program.output])
            if capture:
                caps.append(values)
        out = outs[0] if len(outs) == 1 else np.concatenate(outs)
        if not capture:
            return out
        if len(caps) == 1:
            return out, caps[0]
        return out, {k: np.concatenate([c[k] for c in caps]) for k in caps[0]}

    def _images_per_call(self, capture: bool) -> int:
        """``batch_size``, or fewer images where their values and temporaries would pass BATCH_BYTES."""
        plan = self._plan
        temporaries = [f.intermediate_bytes for f in plan.footprints]
        if capture:  # every value is kept to the end
            values = sum(
                math.prod(self.shapes[s])
                for s in [self.program.input.name] + [op.name for op in self.program.ops if not OP_TABLE[op.kind].view]
            )  # a view: no memory
            per_image = values + max(temporaries)
        else:
            per_image = max(v + t for v, t in zip(plan.live, temporaries))
        return max(1, min(self.batch_size, BATCH_BYTES // max(1, per_image)))

    def _threads_for(self, index: int, threads):
        """``threads``, or fewer for a kernel whose per-thread scratch would together pass SCRATCH_BYTES."""
        scratch = self._plan.footprints[index].scratch_bytes
        if not scratch:
            return threads
        cap = max(1, SCRATCH_BYTES // scratch)
        wanted = threads or self.threads or _C.get_num_threads()
        return cap if wanted > cap else threads

    def _run_batch(self, xq: np.ndarray, threads, keep_all: bool) -> dict[str, np.ndarray]:
        p = self.program
        env = {p.input.name: xq}
        for i, op in enumerate(p.ops):
            args = [env[s] for s in op.inputs]
            env[op.name] = self._run_op(op, args, self._threads_for(i, threads))
            if not keep_all:
                self._free_dead(env, op, i)
        return env

    def _free_dead(self, env: dict, op, index: int) -> None:
        """Drop what no later op reads: the inputs op ``index`` read last, and its own output if nothing reads
        it. The memory plan the loader bounds counts a value only up to its last reader."""
        last_use, output = self._last_use(), self.program.output
        for name in {*op.inputs, op.name}:
            if last_use.get(name, index) == index and name != output:
                env.pop(name, None)

    # ---------------------------------------------------------------------------------- on the GPU
    def _run_cuda(self, x, capture: bool, layout: str, progress: bool):
        dev = self._device_index
        on_device = _cuda.is_device_array(x)
        if on_device:
            is_float, n = self._check_device_input(x, layout)
            torch_out = _cuda.is_torch_cuda(x)
        else:
            arr, is_float = self._as_input(x, layout)
            n, torch_out = arr.shape[0], False
        if n == 0:
            raise ValueError("x holds no images (batch of size 0)")
        step = self._images_per_call(capture)
        chunks = range(0, n, step)
        if progress:
            chunks = _progress(
                chunks, total=len(chunks), desc=f"emulating {self.program.model or 'program'} on {self.device}"
            )
        outs, caps = [], []
        rows = (
            None
            if not on_device or _cuda.is_torch_cuda(x)
            else _cuda.borrow(x, "x", np.float32 if is_float else np.int8)
        )
        for lo in chunks:
            if on_device:
                part = x[lo : lo + step] if rows is None else rows.rows(lo, lo + step)
                xb = self._device_batch(part, is_float, layout)
            else:
                batch = arr[lo : lo + step]
                xq = self.quantize_input(batch, layout) if is_float else batch
                xb = _cuda.to_device(xq, dev)
            values = self._run_batch_cuda(xb, keep_all=capture)
            out = values[self.program.output]
            outs.append(out if on_device else out.numpy())
            if capture:
                caps.append(values if on_device else {k: v.numpy() for k, v in values.items()})
        if on_device:
            outs = [_as_caller_device(o, torch_out, dev) for o in outs]
            caps = [{k: _as_caller_device(v, torch_out, dev) for k, v in c.items()} for c in caps]
        out = outs[0] if len(outs) == 1 else _concat(outs)
        if not capture:
            return out
        if len(caps) == 1:
            return out, caps[0]
        return out, {k: _concat([c[k] for c in caps]) for k in caps[0]}

    def _check_device_input(self, x, layout):
        """(is_float, N) of a device input, after checking its dtype, shape and device."""
        cai_dtype = None if _cuda.is_torch_cuda(x) else np.dtype(x.__cuda_array_interface__["typestr"])
        shape = tuple(x.shape)
        if _cuda.is_torch_cuda(x):
            is_float = x.dtype.is_floating_point
            dev = x.device.index
            if not is_float and str(x.dtype) != "torch.int8":
                raise TypeError(
                    f"x has dtype {x.dtype}; give int8 quantized input (N, "
                    f"{', '.join(map(str, self.input_shape))}) or float images"
                )
        else:
            is_float = cai_dtype.kind == "f"
            dev = _cuda.view(x, "x", cai_dtype).device
            if not is_float and cai_dtype != np.int8:
                raise TypeError(f"x has dtype {cai_dtype}; give int8 quantized input or float32 images")
            if is_float and cai_dtype != np.float32:
                raise TypeError(f"device float images must be float32, got {cai_dtype}")
        if dev is not None and dev != self._device_index:
            raise ValueError(
                f"x is on cuda:{dev} but this emulator runs on {self.device}: move x there "
                f"(x.to('{self.device}')) or build the emulator with device='cuda:{dev}'"
            )
        if is_float:
            want = self.input_shape
            if len(want) == 3:
                if layout not in ("NCHW", "NHWC"):
                    raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
                expect = (want[2], want[0], want[1]) if layout == "NCHW" else want
                if not _cuda.is_torch_cuda(x) and layout == "NCHW":
                    raise ValueError("float device arrays other than torch tensors must be NHWC: pass layout='NHWC'")
            else:
                expect = want
            if len(shape) != len(expect) + 1 or shape[1:] != expect:
                raise ValueError(
                    f"x has shape {shape}; the program takes {layout} images of shape "
                    f"(N, {', '.join(map(str, expect))})"
                )
        elif len(shape) != len(self.input_shape) + 1 or shape[1:] != self.input_shape:
            raise ValueError(
                f"x has shape {shape}; the program's int8 input is (N, "
                f"{', '.join(map(str, self.input_shape))}) "
                f"({'NHWC' if len(self.input_shape) == 3 else 'NK'})"
            )
        return is_float, shape[0]

    def _device_batch(self, xb, is_float, layout):
        """One batch of a device input as an int8 NHWC device array (quantized on the GPU if float)."""
        if not is_float:
            return _cuda.borrow(xb, "x", np.int8)
        if _cuda.is_torch_cuda(xb):
            xb = xb.detach()
            if layout == "NCHW" and xb.dim() == 4:
                xb = xb.permute(0, 2, 3, 1)
            xb = xb.float().contiguous()
        v = _cuda.view(xb, "x", np.float32)
        out, ptr = _cuda.empty(v.shape, np.int8, v._replace(torch=False))
        _C.cuda_quantize_input(
            v.ptr,
            v.size,
            ptr,
            v.size,
            float(self.program.input.scale),
            int(self.program.input.zero_point),
            v.device,
            v.stream,
        )
        # cuda_quantize_input synchronizes (it reports NaN), so the float batch may be freed after it
        return out

    def _run_batch_cuda(self, xb, keep_all: bool) -> dict:
        p = self.program
        env = {p.input.name: xb}
        for i, op in enumerate(p.ops):
            args = [env[s] for s in op.inputs]
            env[op.name] = self._run_op_cuda(op, args)
            if not keep_all:
                self._free_dead(env, op, i)
        return env

    def _run_op_cuda(self, op, args):
        """One op on device arrays: the op table's ``run_cuda``, or its ``run`` (the npuq.ops kernels
        dispatch on device arrays), with the default thread count."""
        spec = OP_TABLE[op.kind]
        return (spec.run_cuda or spec.run)(op, args, self._context(op, None))

    def _last_use(self) -> dict[str, int]:
        if not hasattr(self, "_last_use_cache"):
            last = {}
            for i, op in enumerate(self.program.ops):
                for s in op.inputs:
                    last[s] = i
            self._last_use_cache = last
        return self._last_use_cache

    def _run_op(self, op, args, threads):
        """One op on host arrays: the op table's ``run``."""
        return OP_TABLE[op.kind].run(op, args, self._context(op, threads))

    def _context(self, op, threads) -> RunContext:
        return RunContext(
            kernel=self._kernels.get(op.name),
            rounding=self.program.rounding,
            overflow=self.program.overflow,
            threads=threads,
        )

    def logits(self, x, **kwargs) -> np.ndarray:
        """Real values of the output: float32 ``(q - zero_point) * scale`` of :meth:`run`'s int8 output
        (a numpy array, also for device inputs)."""
        q = _host(self.run(x, **kwargs))
        out = self.program.output_op
        return (q.astype(np.int32) - out.zero_point).astype(np.float32) * np.float32(out.scale)

    __call__ = logits

    def predict(self, x, **kwargs) -> np.ndarray:
        """Arg-max class of each image (ties: the lowest index, like torch.argmax on the logits); numpy."""
        q = _host(self.run(x, **kwargs))
        return q.reshape(q.shape[0], -1).argmax(axis=1)

    def evaluate(self, data, *, progress: bool = False, threads: int | None = None) -> dict:
        """Top-1 accuracy on labelled data: an iterable of ``(images, labels)`` batches (a torch DataLoader)
        or one ``(images, labels)`` pair of arrays. Returns ``{"accuracy", "correct", "total"}``."""
        if isinstance(data, tuple) and len(data) == 2 and not _is_batch_iterable(data):
            data = [data]
        correct = total = 0
        it = _progress(data, desc=f"emulating {self.program.model or 'program'}") if progress else data
        for images, labels in it:
            labels = np.asarray(labels.cpu() if _is_torch(labels) else labels).reshape(-1)
            pred = self.predict(images, threads=threads)
            if pred.shape[0] != labels.shape[0]:
                raise ValueError(f"a batch has {pred.shape[0]} images but {labels.shape[0]} labels")
            correct += int((pred == labels).sum())
            total += int(labels.shape[0])
        if total == 0:
            raise ValueError("the data set is empty")
        return {"accuracy": correct / total, "correct": correct, "total": total}

    def __repr__(self):
        dev = "" if self.device == "cpu" else f", device={self.device!r}"
        return f"Emulator({self.program!r}, threads={self.threads}{dev})"


def max_pool2d(x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Max pooling of int8 NHWC values; padded positions never win (each window holds a real value).
    ``padding`` is (top, bottom, left, right). The one implementation is :func:`npuq.ops.max_pool2d`."""
    return ops.max_pool2d(x, tuple(kernel), stride=tuple(stride), padding=tuple(padding))


def _host(q) -> np.ndarray:
    if isinstance(q, np.ndarray):
        return q
    return _cuda.to_host(q)


def _as_caller_device(obj, torch_out: bool, device: int):
    """A device result as the caller's kind: a torch tensor (same memory) for torch inputs."""
    if not torch_out:
        return obj
    import torch

    return torch.as_tensor(obj, device=torch.device("cuda", device))


def _concat(parts):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    if _cuda.is_torch_cuda(parts[0]):
        import torch

        return torch.cat(parts)
    host = np.concatenate([_cuda.to_host(p) for p in parts])
    return _cuda.to_device(host, parts[0].device, 0)


def _is_torch(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _is_batch_iterable(pair) -> bool:
    a, b = pair
    return not (hasattr(a, "shape") and hasattr(b, "shape"))


def _float_array(x) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().float().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array or a torch tensor, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"float images expected, got dtype {x.dtype}")
    return x


def _progress(it, **kw):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in every extra
        return it
    return tqdm(it, leave=False, **kw)


__all__ = ["Emulator", "max_pool2d"]
