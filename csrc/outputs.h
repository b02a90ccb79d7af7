// How the kernels of every backend allocate their outputs, and in which dtype they
// accumulate. Accumulation: fp64 for fp64 tensors, fp32 otherwise; batch statistics and
// per-channel sums come back in that dtype. With FUSEDGAN_POISON_OUTPUTS=1 in
// the environment every output is filled with NaN before a kernel writes it, so
// an element a kernel forgets to write shows up as NaN in the comparisons: the GPU run turns
// it on, and the test suite does too (tests/conftest.py). Off, it is a plain allocation.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <limits>

namespace fusedgan {

inline at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// With FUSEDGAN_POISON_OUTPUTS=1 (read once), outputs start as NaN.
inline bool poison_outputs() {
  static const bool enabled = [] {
    const char* value = std::getenv("FUSEDGAN_POISON_OUTPUTS");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }();
  return enabled;
}

// at::empty_like(like), NaN-filled when poisoning is on.
inline at::Tensor new_output(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like);
  if (poison_outputs() && out.is_floating_point()) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

}  // namespace fusedgan
