// Python bindings of the CUDA kernels (compiled only when CMake found a CUDA toolkit).
//
// Device memory crosses this boundary as raw pointers (Python ints) with the element count of the
// buffer behind each one; the Python layer (python/npuq/_cuda.py) takes them from torch tensors or
// `__cuda_array_interface__` objects. Every pointer is checked to be device memory of the device the
// call runs on, and every count against what the kernel will touch, before anything is launched.
#include "bindings.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/params.h"
#include "kernels.h"
#include "runtime.h"

namespace py = pybind11;

namespace npuq {
namespace cuda {

namespace {

void require_count(int64_t have, int64_t need, const char* name) {
  if (have < need)
    throw InvalidArgument(std::string(name) + " holds " + std::to_string(have) + " elements but the operation needs " +
                          std::to_string(need));
}

void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

// A buffer of device memory with a shape and a dtype: the type npuq returns on the GPU when the caller
// gave no torch tensor. It exports __cuda_array_interface__ (version 3), so torch.as_tensor, CuPy and
// Numba can use it without a copy.
class DeviceArray {
 public:
  DeviceArray(std::vector<int64_t> shape, const std::string& dtype, int device, uintptr_t stream)
      : shape_(std::move(shape)), dtype_(py::dtype(dtype)), device_(device), stream_(stream) {
    int64_t n = 1;
    for (int64_t d : shape_) {
      if (d < 0) throw InvalidArgument("a device array's shape must not be negative");
      n *= d;
    }
    count_ = n;
    require_device(device);
    buffer_ = std::make_shared<DeviceBuffer>(static_cast<size_t>(n) * dtype_.itemsize(), device, as_stream(stream));
  }

  // The same memory seen with another shape.
  std::shared_ptr<DeviceArray> reshape(std::vector<int64_t> shape) const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (n != count_ || std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; }))
      throw InvalidArgument("cannot reshape a device array of " + std::to_string(count_) + " elements");
    auto out = std::shared_ptr<DeviceArray>(new DeviceArray(*this));
    out->shape_ = std::move(shape);
    return out;
  }

  static std::shared_ptr<DeviceArray> from_numpy(const py::array& a, int device, uintptr_t stream) {
    py::array c = py::array::ensure(a, py::array::c_style);
    std::vector<int64_t> shape(c.shape(), c.shape() + c.ndim());
    auto out = std::make_shared<DeviceArray>(shape, std::string(py::str(c.dtype())), device, stream);
    if (c.nbytes() > 0) {
      DeviceGuard guard(device);
      check(cudaMemcpyAsync(out->buffer_->data(), c.data(), c.nbytes(), cudaMemcpyHostToDevice, as_stream(stream)),
            "cudaMemcpyAsync (host to device)");
      check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
    }
    return out;
  }

  py::array numpy() const {
    std::vector<py::ssize_t> shape(shape_.begin(), shape_.end());
    py::array out(dtype_, shape);
    if (out.nbytes() > 0) {
      DeviceGuard guard(device_);
      void* dst = out.mutable_data();
      {
        py::gil_scoped_release release;
        check(cudaMemcpyAsync(dst, buffer_->data(), out.nbytes(), cudaMemcpyDeviceToHost, as_stream(stream_)),
              "cudaMemcpyAsync (device to host)");
        check(cudaStreamSynchronize(as_stream(stream_)), "cudaStreamSynchronize");
      }
    }
    return out;
  }

  py::dict interface() const {
    py::dict d;
    py::tuple shape(shape_.size());
    for (size_t i = 0; i < shape_.size(); ++i) shape[i] = shape_[i];
    d["shape"] = shape;
    d["typestr"] = std::string(py::str(dtype_.attr("str")));
    d["data"] = py::make_tuple(ptr(), false);
    d["version"] = 3;
    d["strides"] = py::none();
    // the stream the data will be ready on (1: the legacy default stream, as the protocol spells it)
    d["stream"] = stream_ == 0 ? uintptr_t{1} : stream_;
    return d;
  }

  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(buffer_->data()); }
  const std::vector<int64_t>& shape() const { return shape_; }
  py::dtype dtype() const { return dtype_; }
  int device() const { return device_; }
  uintptr_t stream() const { return stream_; }
  int64_t size() const { return count_; }
  int64_t nbytes() const { return static_cast<int64_t>(buffer_->bytes()); }

 private:
  std::vector<int64_t> shape_;
  py::dtype dtype_;
  int device_;
  uintptr_t stream_;
  int64_t count_ = 0;
  std::shared_ptr<DeviceBuffer> buffer_;
};

class PyCudaConv2dPlan {
 public:
  // The layer is checked by the conversion the CPU plan uses (common/params.h), then by the plan.
  PyCudaConv2dPlan(const bindings::ConvArgs& params, const py::array& weight, const py::object& bias, int device,
                   uintptr_t stream) {
    const bindings::ConvLayer l = bindings::conv_layer(params, weight, bias);
    plan_ = std::make_unique<Conv2dPlan>(l.params, l.weight, l.bias, device, as_stream(stream));
  }

  std::array<int64_t, 4> output_shape(int64_t batch, int64_t in_h, int64_t in_w) const {
    const Conv2dShape s = plan_->shape_for(batch, in_h, in_w);
    return {s.batch, s.out_h, s.out_w, s.out_c};
  }

  void run(uintptr_t x, int64_t x_count, std::array<int64_t, 4> x_shape, uintptr_t out, int64_t out_count,
           uintptr_t stream, const std::string& engine) const {
    const Conv2dShape& layer = plan_->layer();
    if (x_shape[3] != layer.in_c)
      throw InvalidArgument("x has " + std::to_string(x_shape[3]) + " channels but the layer expects " +
                            std::to_string(layer.in_c));
    const Conv2dShape s = plan_->shape_for(x_shape[0], x_shape[1], x_shape[2]);
    require_count(x_count, s.batch * s.in_h * s.in_w * s.in_c, "x");
    require_count(out_count, s.out_rows() * s.out_c, "out");
    require_device_pointer(as_ptr(x), plan_->device(), "x");
    require_device_pointer(as_ptr(out), plan_->device(), "out");
    const GemmEngine e = parse_engine(engine);
    py::gil_scoped_release release;
    plan_->run(static_cast<const int8_t*>(as_ptr(x)), s.batch, s.in_h, s.in_w, static_cast<int8_t*>(as_ptr(out)),
               as_stream(stream), e);
  }

  std::string path() const { return plan_->path(); }
  int device() const { return plan_->device(); }
  int64_t unsafe_channels() const { return plan_->unsafe_channels(); }

 private:
  std::unique_ptr<Conv2dPlan> plan_;
};

void add_py(const bindings::AddArgs& params, uintptr_t a, int64_t a_count, uintptr_t b, int64_t b_count, uintptr_t out,
            int64_t out_count, int device, uintptr_t stream) {
  const AddParams p = bindings::add_params(params);
  const int64_t count = a_count;
  if (count < 1) throw InvalidArgument("add: the inputs are empty");
  if (b_count != a_count)
    throw InvalidArgument("add: a and b must have the same size, got " + std::to_string(a_count) + " and " +
                          std::to_string(b_count));
  require_count(out_count, count, "out");
  require_device(device);
  require_device_pointer(as_ptr(a), device, "a");
  require_device_pointer(as_ptr(b), device, "b");
  require_device_pointer(as_ptr(out), device, "out");
  add(static_cast<const int8_t*>(as_ptr(a)), static_cast<const int8_t*>(as_ptr(b)), static_cast<int8_t*>(as_ptr(out)),
      count, p, device, as_stream(stream));
}

void pool_py(bool average, const bindings::PoolArgs& params, uintptr_t x, int64_t x_count,
             std::array<int64_t, 4> x_shape, uintptr_t out, int64_t out_count, int device, uintptr_t stream) {
  const Pool2dParams p = bindings::pool_params(x_shape, params);
  require_count(x_count, p.batch * p.in_h * p.in_w * p.channels, "x");
  require_count(out_count, p.batch * p.out_h * p.out_w * p.channels, "out");
  require_device(device);
  require_device_pointer(as_ptr(x), device, "x");
  require_device_pointer(as_ptr(out), device, "out");
  if (average)
    avg_pool2d(static_cast<const int8_t*>(as_ptr(x)), static_cast<int8_t*>(as_ptr(out)), p, device, as_stream(stream));
  else
    max_pool2d(static_cast<const int8_t*>(as_ptr(x)), static_cast<int8_t*>(as_ptr(out)), p, device, as_stream(stream));
}

void quantize_py(uintptr_t x, int64_t count, uintptr_t out, int64_t out_count, float scale, int32_t zero_point,
                 int device, uintptr_t stream) {
  if (count < 1) throw InvalidArgument("quantize_input: x is empty");
  require_count(out_count, count, "out");
  if (zero_point < -128 || zero_point > 127) throw InvalidArgument("quantize_input: zero_point must be in [-128, 127]");
  require_device(device);
  require_device_pointer(as_ptr(x), device, "x");
  require_device_pointer(as_ptr(out), device, "out");
  py::gil_scoped_release release;
  quantize_input(static_cast<const float*>(as_ptr(x)), static_cast<int8_t*>(as_ptr(out)), count, scale, zero_point,
                 device, as_stream(stream));
}

py::dict info() {
  py::dict d;
  d["built"] = true;
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  d["runtime_version"] = runtime;
  std::string reason;
  const int n = device_count(&reason);
  d["devices"] = n;
  d["reason"] = reason;
  d["architectures"] = std::string(built_architectures());
  d["architectures_text"] = describe_built_architectures();
  py::list names, capabilities, runnable;
  for (int i = 0; i < n; ++i) {
    const cudaError_t image = kernel_image_status(i);
    runnable.append(image == cudaSuccess ? py::none() : py::cast(std::string(cudaGetErrorName(image))));
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) {
      names.append(std::string(prop.name));
      capabilities.append(py::make_tuple(prop.major, prop.minor));
    } else {
      cudaGetLastError();
      names.append("?");
      capabilities.append(py::make_tuple(0, 0));
    }
  }
  d["names"] = names;
  d["capabilities"] = capabilities;
  // per device: None when this build's kernels run on it, else why not (cudaErrorNoKernelImageForDevice)
  d["kernel_image_errors"] = runnable;
  return d;
}

// Copies host.nbytes bytes of device memory at `src` into the (writable, C-contiguous) host array.
void copy_to_host(py::array host, uintptr_t src, int device, uintptr_t stream) {
  if (!(host.flags() & py::array::c_style) || !host.writeable())
    throw InvalidArgument("the host array must be C-contiguous and writable");
  require_device(device);
  require_device_pointer(as_ptr(src), device, "src");
  DeviceGuard guard(device);
  void* dst = host.mutable_data();
  const size_t bytes = host.nbytes();
  py::gil_scoped_release release;
  check(cudaMemcpyAsync(dst, as_ptr(src), bytes, cudaMemcpyDeviceToHost, as_stream(stream)), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

void synchronize(int device, uintptr_t stream) {
  require_device(device);
  DeviceGuard guard(device);
  py::gil_scoped_release release;
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

}  // namespace

void register_bindings(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const DeviceOutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const CudaError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  m.def("cuda_info", &info, "CUDA build and device information");
  m.def("cuda_synchronize", &synchronize, py::arg("device"), py::arg("stream"));
  m.def("cuda_copy_to_host", &copy_to_host, py::arg("host"), py::arg("src"), py::arg("device"), py::arg("stream"));

  py::class_<DeviceArray, std::shared_ptr<DeviceArray>>(m, "CudaArray")
      .def(py::init<std::vector<int64_t>, const std::string&, int, uintptr_t>(), py::arg("shape"), py::arg("dtype"),
           py::arg("device") = 0, py::arg("stream") = 0)
      .def_static("from_numpy", &DeviceArray::from_numpy, py::arg("array"), py::arg("device") = 0,
                  py::arg("stream") = 0)
      .def("numpy", &DeviceArray::numpy)
      .def("reshape", &DeviceArray::reshape, py::arg("shape"))
      .def_property_readonly("__cuda_array_interface__", &DeviceArray::interface)
      .def_property_readonly("ptr", &DeviceArray::ptr)
      .def_property_readonly("shape",
                             [](const DeviceArray& a) {
                               py::tuple t(a.shape().size());
                               for (size_t i = 0; i < a.shape().size(); ++i) t[i] = a.shape()[i];
                               return t;
                             })
      .def_property_readonly("dtype", &DeviceArray::dtype)
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly("stream", &DeviceArray::stream)
      .def_property_readonly("size", &DeviceArray::size)
      .def_property_readonly("nbytes", &DeviceArray::nbytes);

  py::class_<PyCudaConv2dPlan>(m, "CudaConv2dPlan")
      .def(py::init<const bindings::ConvArgs&, const py::array&, const py::object&, int, uintptr_t>(),
           py::arg("params"), py::arg("weight"), py::arg("bias"), py::arg("device"), py::arg("stream"))
      .def("output_shape", &PyCudaConv2dPlan::output_shape, py::arg("batch"), py::arg("in_h"), py::arg("in_w"))
      .def("run", &PyCudaConv2dPlan::run, py::arg("x"), py::arg("x_count"), py::arg("x_shape"), py::arg("out"),
           py::arg("out_count"), py::arg("stream"), py::arg("engine") = "auto")
      .def_property_readonly("path", &PyCudaConv2dPlan::path)
      .def_property_readonly("device", &PyCudaConv2dPlan::device)
      .def_property_readonly("unsafe_channels", &PyCudaConv2dPlan::unsafe_channels);

  m.def("cuda_add", &add_py, py::arg("params"), py::arg("a"), py::arg("a_count"), py::arg("b"), py::arg("b_count"),
        py::arg("out"), py::arg("out_count"), py::arg("device"), py::arg("stream"));
  m.def("cuda_pool2d", &pool_py, py::arg("average"), py::arg("params"), py::arg("x"), py::arg("x_count"),
        py::arg("x_shape"), py::arg("out"), py::arg("out_count"), py::arg("device"), py::arg("stream"));
  m.def("cuda_quantize_input", &quantize_py, py::arg("x"), py::arg("count"), py::arg("out"), py::arg("out_count"),
        py::arg("scale"), py::arg("zero_point"), py::arg("device"), py::arg("stream"));
}

}  // namespace cuda
}  // namespace npuq
