// Whether this binary carries code a given GPU can run (see runtime.h, require_device).
//
// nvcc embeds, per kernel, machine code (SASS) for each architecture of the build and optionally PTX that
// the driver compiles for newer GPUs. A GPU covered by neither fails every launch with
// cudaErrorNoKernelImageForDevice, deep inside the first op. Asking the runtime for the attributes of a
// trivial kernel of the same build loads that kernel's image for the device, so the answer holds for every
// kernel (all are compiled with the same architecture list) and can be given before any work is queued.
#include <cuda_runtime_api.h>

#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "runtime.h"

#ifndef NPUQ_CUDA_ARCHS_BUILT
#define NPUQ_CUDA_ARCHS_BUILT ""
#endif

namespace npuq {
namespace cuda {

namespace {

__global__ void image_probe_kernel() {}

}  // namespace

const char* built_architectures() { return NPUQ_CUDA_ARCHS_BUILT; }

std::string describe_built_architectures() {
  // CMake's list, commas for semicolons: "75-real,80-real,90-real,120" (a bare number is both SASS and PTX)
  std::vector<std::string> sass, ptx;
  std::stringstream list(NPUQ_CUDA_ARCHS_BUILT);
  std::string item;
  while (std::getline(list, item, ',')) {
    if (item.empty()) continue;
    const size_t dash = item.find('-');
    const std::string number = item.substr(0, dash);
    const std::string kind = dash == std::string::npos ? "" : item.substr(dash + 1);
    if (number.empty() || number.find_first_not_of("0123456789") != std::string::npos) {
      sass.push_back("'" + item + "' as CMake resolved it when building");  // native, all, all-major
      continue;
    }
    if (kind != "virtual") sass.push_back("sm_" + number);
    if (kind != "real") ptx.push_back("compute_" + number);
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  std::string text = "machine code for " + (sass.empty() ? std::string("no architecture") : join(sass));
  if (!ptx.empty()) text += ", PTX for " + join(ptx) + " (compiled by the driver for newer GPUs)";
  return text;
}

cudaError_t kernel_image_status(int device) {
  static std::mutex mutex;
  static std::vector<int> known;  // per device: -1 not yet asked, else the cudaError_t
  std::lock_guard<std::mutex> lock(mutex);
  if (device < 0) return cudaErrorInvalidDevice;
  if (static_cast<size_t>(device) >= known.size()) known.resize(device + 1, -1);
  if (known[device] < 0) {
    int previous = -1;
    cudaError_t status = cudaGetDevice(&previous);
    if (status == cudaSuccess && previous != device) status = cudaSetDevice(device);
    if (status == cudaSuccess) {
      cudaFuncAttributes attributes{};
      status = cudaFuncGetAttributes(&attributes, image_probe_kernel);
    }
    if (status != cudaSuccess) cudaGetLastError();  // not sticky: clear it for the caller's next call
    if (previous >= 0 && previous != device) cudaSetDevice(previous);
    known[device] = static_cast<int>(status);
  }
  return static_cast<cudaError_t>(known[device]);
}

}  // namespace cuda
}  // namespace npuq
