// The emulated runtime of the CUDA launchers (backend "cuda-sim", CPU tensors): the same
// names as csrc/cuda/runtime.cuh gives the GPU build, so the launchers' code (paths, grids,
// workspaces) is what runs and is tested here.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <limits>
#include <string>

#include "simt.h"

namespace fusedgan {
namespace {

using simt::dim3;

// The emulated device: an H200's 132 multiprocessors, so plans are the GPU's.
constexpr int kEmulatedMultiprocessors = 132;

struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};

// A pointer that may reach t's elements only: the bytes from its lowest to its highest
// element (its strides are >= 0).
template <typename T>
simt::Ptr<T> device_ptr(const at::Tensor& t) {
  T* p = static_cast<T*>(t.data_ptr());
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const int64_t end = t.numel() == 0 ? 0 : last + 1;
  return simt::Ptr<T>(p, p, p + end);
}

template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, const Args&... args) {
  simt::launch_kernel<Kernel>(grid, block, args...);
}

// A fresh output filled with NaN, so an element no kernel writes fails the comparisons.
at::Tensor poison(at::Tensor t) {
  if (t.is_floating_point()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

int multiprocessors(const at::Device&) { return kEmulatedMultiprocessors; }

// FUSEDGAN_SIMT_INT64=1 makes every launch take int64 offsets, so the int64 kernels run in
// CI, on tensors far smaller than the 2^31 elements that choose them on a GPU.
bool force_int64() {
  const char* value = std::getenv("FUSEDGAN_SIMT_INT64");
  return value != nullptr && std::string(value) == "1";
}

}  // namespace
}  // namespace fusedgan
