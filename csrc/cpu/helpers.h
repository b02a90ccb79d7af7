// Small helpers of the C++ CPU kernels: per-channel values in and out without tensor ops,
// and the parallel grain that keeps small work on one thread.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/TensorIterator.h>

#include <algorithm>
#include <vector>

#include "../outputs.h"

namespace fusedgan {
namespace {

using at::Tensor;

// The values of a (C,) tensor of any floating dtype and stride, read without tensor ops:
// on a small input every dispatcher call is a visible part of a layer's cost.
std::vector<double> to_vector(const Tensor& t) {
  std::vector<double> v(t.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "to_vector", [&] {
    const scalar_t* p = t.const_data_ptr<scalar_t>();
    const int64_t stride = t.stride(0);  // read once: stride() is an out-of-line call
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(p[int64_t(i) * stride]);
  });
  return v;
}

// A new (C,) tensor with `options` holding v (rounded to its dtype).
Tensor from_vector(const std::vector<double>& v, const at::TensorOptions& options) {
  Tensor t = at::empty({int64_t(v.size())}, options);  // written whole below: nothing to poison
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "from_vector", [&] {
    scalar_t* p = t.data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<scalar_t>(v[i]);
  });
  return t;
}

// The grain for at::parallel_for over items of `elements` values each: small work stays on
// the calling thread (starting the others costs more than it saves below ATen's grain).
int64_t grain(int64_t elements) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, elements));
}

}  // namespace
}  // namespace fusedgan
