// Conv2d + bias + LeakyReLU: the launchers of the CUDA kernels (host code of both builds,
// see host.h). Forward: torch's convolution (cuDNN on the GPU) without bias, then one
// in-place pass adding the bias and applying the activation. Backward's dy -> dz step
// reduces dbias per channel in the same pass, over a (channel block, row split) grid whose
// partial sums a second kernel adds in split order.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <tuple>

#include "host.h"
#include "conv_leaky_relu_kernels.cuh"

namespace fusedgan {
namespace {

Tensor conv_leaky_relu_forward_cuda(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups, double slope) {
  const DeviceGuard guard(x.device());
  const View y = view_of(at::convolution(x, weight, std::nullopt, stride, padding, dilation, false, {0, 0}, groups));
  if (y.t.numel() == 0) return y.t;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.t.scalar_type(), "conv_leaky_relu_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Tensor b = bias ? bias->to(y.t.options().dtype(c10::CppTypeToScalarType<acc_t>::value)).contiguous()
                          : Tensor();
    const Plan plan = plan_elementwise<scalar_t>(y, multiprocessors(x.device()), {&y});
    with_elementwise<scalar_t>(plan, [&](auto index, auto vec, auto pack_rows) {
      using index_t = decltype(index);
      launch<bias_leaky_relu_kernel<scalar_t, acc_t, index_t, decltype(vec)::value, decltype(pack_rows)::value>>(
          plan.grid(), kThreads, device_ptr<scalar_t>(y.t), optional_ptr<const acc_t>(b), plan.rows<index_t>(),
          strides<index_t>(y), acc_t(slope));
    });
  });
  return y.t;
}

std::tuple<Tensor, Tensor> leaky_relu_grad_bias_cuda(const Tensor& dy_in, const Tensor& y_in, double slope,
                                                     bool has_bias) {
  TORCH_CHECK(dy_in.sizes() == y_in.sizes(), "fusedgan::leaky_relu_grad_bias: grad and output shapes differ");
  const DeviceGuard guard(y_in.device());
  const View y = view_of(y_in);
  const View dy = view_of(dy_in.to(y_in.scalar_type()));
  Tensor dz = poison(at::empty_like(y.t));
  const View dzv = view_of(dz);
  const auto acc_dtype = y_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = y_in.options().dtype(acc_dtype);
  if (y.t.numel() == 0) return {dz, at::zeros({has_bias ? y.C : 0}, opts)};
  const Plan plan = plan_reduction(y, multiprocessors(y_in.device()), {&y, &dy, &dzv});
  const Tensor part = has_bias ? poison(at::empty({plan.n_splits, y.C}, opts)) : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y_in.scalar_type(), "leaky_relu_grad_bias_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_index(plan, [&](auto index) {
      using index_t = decltype(index);
      launch<leaky_relu_grad_bias_kernel<scalar_t, acc_t, index_t>>(
          plan.grid(), kThreads, device_ptr<const scalar_t>(dy.t), device_ptr<const scalar_t>(y.t),
          device_ptr<scalar_t>(dz), optional_ptr<acc_t>(part), plan.rows<index_t>(), strides<index_t>(dy),
          strides<index_t>(y), strides<index_t>(dzv), acc_t(slope));
    });
  });
  if (!has_bias) return {dz, at::empty({0}, opts)};
  if (plan.n_splits == 1) return {dz, part.view({y.C})};
  Tensor db = poison(at::empty({y.C}, opts));
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, "leaky_relu_grad_bias_cuda", [&] {
    launch<sum_splits_kernel<scalar_t>>(dim3(unsigned(ceil_div(y.C, kThreads))), kThreads,
                                        device_ptr<const scalar_t>(part), device_ptr<scalar_t>(db), y.C,
                                        plan.n_splits);
  });
  return {dz, db};
}

}  // namespace
}  // namespace fusedgan
