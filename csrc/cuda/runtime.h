// Host-side plumbing shared by the CUDA kernels: error translation, device checks, stream-ordered
// device memory. Compiled by both nvcc (the .cu files) and the host compiler (the bindings).
//
// Every CUDA runtime call goes through check(): a failure becomes a C++ exception whose message names
// the call, which the bindings turn into a Python exception. Running out of device memory is its own
// type (Python MemoryError), so that callers can retry with a smaller batch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace npuq {
namespace cuda {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct DeviceOutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws CudaError (DeviceOutOfMemory for cudaErrorMemoryAllocation) naming `what`.
void check(cudaError_t status, const char* what);
// After a kernel launch: launch-configuration errors and earlier asynchronous faults.
void check_launch(const char* kernel);

// Number of usable devices; 0 with the runtime's reason in *reason when there is none.
int device_count(std::string* reason);
// Throws CudaError unless 0 <= device < device_count() and this build has code the device can run
// (machine code for its architecture, or PTX the driver can compile for it).
void require_device(int device);

// The CUDA architectures this binary was compiled for, as CMake listed them ("75-real,80-real,...,120"),
// and the same in words for error messages.
const char* built_architectures();
std::string describe_built_architectures();
// cudaSuccess when the kernels of this build can run on `device`, else the runtime's error
// (cudaErrorNoKernelImageForDevice for a GPU outside the build's architectures). Asked once per device.
cudaError_t kernel_image_status(int device);

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Throws InvalidArgument unless `ptr` points into device memory of `device` (host, managed-on-other-
// device and unknown pointers are refused with a message naming `name`). nullptr is refused too.
void require_device_pointer(const void* ptr, int device, const char* name);

inline cudaStream_t as_stream(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

// Device memory allocated and freed in the order of `stream` (cudaMallocAsync / cudaFreeAsync).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, int device, cudaStream_t stream);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }

 private:
  void release() noexcept;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  int device_ = -1;
  cudaStream_t stream_ = nullptr;
};

// Copies host memory into a new long-lived device buffer (allocated on the legacy default stream, copied
// on `stream`, synchronously with respect to the host data).
DeviceBuffer upload(const void* host, size_t bytes, int device, cudaStream_t stream);

}  // namespace cuda
}  // namespace npuq
