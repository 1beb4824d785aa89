// See runtime.h.
#include "runtime.h"

#include <sstream>

#include "npuq/ops.h"

namespace npuq {
namespace cuda {

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  std::ostringstream os;
  os << what << " failed: " << cudaGetErrorName(status) << " (" << cudaGetErrorString(status) << ")";
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the sticky-free allocation error so later calls can proceed
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
      os << "; the device has " << free_b / (1 << 20) << " MiB free of " << total_b / (1 << 20)
         << " MiB: use a smaller batch";
    throw DeviceOutOfMemory(os.str());
  }
  throw CudaError(os.str());
}

void check_launch(const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) check(status, (std::string("launching ") + kernel).c_str());
}

int device_count(std::string* reason) {
  int n = 0;
  const cudaError_t status = cudaGetDeviceCount(&n);
  if (status != cudaSuccess) {
    cudaGetLastError();
    if (reason) *reason = std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
    return 0;
  }
  if (n == 0 && reason) *reason = "no CUDA device is visible";
  return n;
}

void require_device(int device) {
  std::string reason;
  const int n = device_count(&reason);
  if (n == 0) throw CudaError("no CUDA GPU is available (" + reason + ")");
  if (device < 0 || device >= n)
    throw InvalidArgument("CUDA device " + std::to_string(device) + " does not exist: " + std::to_string(n) +
                          " device(s) are visible (0.." + std::to_string(n - 1) + ")");
  const cudaError_t image = kernel_image_status(device);
  if (image != cudaSuccess) {
    cudaDeviceProp prop{};
    std::ostringstream os;
    os << "CUDA device " << device;
    if (cudaGetDeviceProperties(&prop, device) == cudaSuccess)
      os << " (" << prop.name << ", compute capability " << prop.major << "." << prop.minor << ")";
    else cudaGetLastError();
    os << " cannot run npuq's CUDA kernels: " << cudaGetErrorName(image) << " (" << cudaGetErrorString(image)
       << "). This build has " << describe_built_architectures()
       << ". Build npuq for this GPU from source: NPUQ_CUDA_ARCHS=";
    if (prop.major > 0) os << prop.major << prop.minor;
    else os << "native";
    os << " pip install --no-binary npuq npuq (docs/cuda.md, 'Which GPUs')";
    throw CudaError(os.str());
  }
}

DeviceGuard::DeviceGuard(int device) {
  check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  int now = -1;
  if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
}

void require_device_pointer(const void* ptr, int device, const char* name) {
  if (ptr == nullptr) throw InvalidArgument(std::string(name) + " is a null pointer");
  cudaPointerAttributes attr{};
  const cudaError_t status = cudaPointerGetAttributes(&attr, ptr);
  if (status != cudaSuccess) {
    cudaGetLastError();
    throw InvalidArgument(std::string(name) + " is not CUDA memory (" + cudaGetErrorString(status) + ")");
  }
  if (attr.type == cudaMemoryTypeUnregistered || attr.type == cudaMemoryTypeHost)
    throw InvalidArgument(std::string(name) + " is host memory; the CUDA kernels need device memory on device " +
                          std::to_string(device) + " (move it with .cuda() / .to(device))");
  if (attr.type == cudaMemoryTypeDevice && attr.device != device)
    throw InvalidArgument(std::string(name) + " is on CUDA device " + std::to_string(attr.device) +
                          " but the operation runs on device " + std::to_string(device) +
                          ": put every argument on one device");
}

DeviceBuffer::DeviceBuffer(size_t bytes, int device, cudaStream_t stream)
    : bytes_(bytes), device_(device), stream_(stream) {
  if (bytes == 0) return;
  DeviceGuard guard(device);
  check(cudaMallocAsync(&data_, bytes, stream),
        ("allocating " + std::to_string(bytes) + " bytes on CUDA device " + std::to_string(device)).c_str());
}

DeviceBuffer::~DeviceBuffer() { release(); }

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
    stream_ = other.stream_;
  }
  return *this;
}

void DeviceBuffer::release() noexcept {
  if (!data_) return;
  int previous = -1;
  cudaGetDevice(&previous);
  if (previous != device_) cudaSetDevice(device_);
  cudaFreeAsync(data_, stream_);  // errors here cannot be reported from a destructor
  if (previous >= 0 && previous != device_) cudaSetDevice(previous);
  data_ = nullptr;
}

DeviceBuffer upload(const void* host, size_t bytes, int device, cudaStream_t stream) {
  // Long-lived data (a plan's weights): allocated in the order of the legacy default stream, which outlives
  // any stream the caller may destroy before the buffer is freed. The copy runs on `stream`.
  DeviceBuffer buf(bytes, device, nullptr);
  if (bytes == 0) return buf;
  DeviceGuard guard(device);
  check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize (allocation)");
  check(cudaMemcpyAsync(buf.data(), host, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (upload)");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (upload)");
  return buf;
}

}  // namespace cuda
}  // namespace npuq
