// The GPU runtime of the launchers (batch_norm_act_launch.h, conv_leaky_relu_launch.h): the
// same names as csrc/simt/runtime.h gives the emulated build.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../outputs.h"

#include <limits>
#include <mutex>
#include <vector>

namespace fusedgan {
namespace {

using DeviceGuard = c10::cuda::CUDAGuard;

template <typename T>
T* device_ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Kernel<<<grid, block>>>(args...) on the current stream (right under CUDA graphs).
template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, const Args&... args) {
  Kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Fresh outputs and workspaces, NaN-filled under FUSEDGAN_POISON_OUTPUTS=1 (csrc/outputs.h:
// the GPU run turns it on, so an element a kernel forgets to write shows up); the emulated
// build always fills them.
at::Tensor poison(at::Tensor t) {
  if (poison_outputs() && t.is_floating_point()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

// Only the emulated build can be told to take int64 offsets for small tensors.
constexpr bool force_int64() { return false; }

int multiprocessors(const at::Device& device) {
  static std::mutex mutex;
  static std::vector<int> counts;
  const int index = device.index();
  std::lock_guard<std::mutex> lock(mutex);
  if (int(counts.size()) <= index) counts.resize(index + 1, 0);
  if (counts[index] == 0)
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&counts[index], cudaDevAttrMultiProcessorCount, index));
  return counts[index];
}

}  // namespace
}  // namespace fusedgan
