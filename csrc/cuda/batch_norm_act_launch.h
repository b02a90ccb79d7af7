// BatchNorm + activation: the launchers of the CUDA kernels (host code of both builds, see
// host.h): the path (one-pass, or tiled: partial results, merge, elementwise pass), grids,
// workspaces, vector and index widths. Launched on the current stream, with no host
// synchronisation.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <tuple>

#include "../op_checks.h"
#include "host.h"
#include "batch_norm_act_kernels.cuh"

namespace fusedgan {
namespace {

std::tuple<Tensor, Tensor, Tensor> bn_act_forward_cuda(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                                                       const std::optional<Tensor>& mean_in,
                                                       const std::optional<Tensor>& var_in, bool training, double eps,
                                                       int64_t act, double slope) {
  check_bn_act_forward(x_in, training, mean_in, var_in);
  const DeviceGuard guard(x_in.device());
  const View x = view_of(x_in);
  Tensor y = poison(at::empty_like(x.t));
  const View yv = view_of(y);
  const int sms = multiprocessors(x_in.device());
  Tensor mean, var;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "bn_act_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto opts = x_in.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const Tensor w = weight.to(opts).contiguous(), b = bias.to(opts).contiguous();
    const auto apply = [&] {  // y from mean and var: the elementwise pass
      const Plan plan = plan_elementwise<scalar_t>(x, sms, {&x, &yv});
      with_elementwise<scalar_t>(plan, [&](auto index, auto vec, auto pack_rows) {
        using index_t = decltype(index);
        launch<bn_apply_kernel<scalar_t, acc_t, index_t, decltype(vec)::value, decltype(pack_rows)::value>>(
            plan.grid(), kThreads, device_ptr<const scalar_t>(x.t), device_ptr<scalar_t>(y),
            device_ptr<const acc_t>(mean), device_ptr<const acc_t>(var), device_ptr<const acc_t>(w),
            device_ptr<const acc_t>(b), plan.rows<index_t>(), strides<index_t>(x), strides<index_t>(yv),
            acc_t(eps), int(act), acc_t(slope));
      });
    };
    if (!training) {
      mean = mean_in->to(opts, false, /*copy=*/true).contiguous();
      var = var_in->to(opts, false, /*copy=*/true).contiguous();
      if (x.t.numel() > 0) apply();
      return;
    }
    mean = poison(at::empty({x.C}, opts));
    var = poison(at::empty({x.C}, opts));
    if (x.t.numel() == 0) {
      mean.zero_(), var.zero_();
      return;
    }
    const Plan plan = plan_reduction(x, sms, {&x, &yv});
    const Tensor part = plan.one_pass ? Tensor() : poison(at::empty({3, plan.n_splits, x.C}, opts));
    with_reduction(plan, [&](auto index, auto one_pass) {
      using index_t = decltype(index);
      launch<bn_stats_kernel<scalar_t, acc_t, index_t, decltype(one_pass)::value>>(
          plan.grid(), kThreads, device_ptr<const scalar_t>(x.t), device_ptr<scalar_t>(y),
          device_ptr<const acc_t>(w), device_ptr<const acc_t>(b), device_ptr<acc_t>(mean), device_ptr<acc_t>(var),
          optional_ptr<acc_t>(part), plan.rows<index_t>(), strides<index_t>(x), strides<index_t>(yv), acc_t(eps),
          int(act), acc_t(slope));
    });
    if (plan.one_pass) return;  // y written too
    launch<bn_stats_merge_kernel<scalar_t, acc_t>>(dim3(unsigned(ceil_div(x.C, kThreads))), kThreads,
                                                   device_ptr<const acc_t>(part), device_ptr<const scalar_t>(x.t),
                                                   strides<int64_t>(x).c, device_ptr<acc_t>(mean),
                                                   device_ptr<acc_t>(var), x.C, plan.n_splits);
    apply();
  });
  return {y, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> bn_act_backward_cuda(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight,
                                                        const Tensor& bias, const Tensor& mean_in, const Tensor& var_in,
                                                        bool training, double eps, int64_t act, double slope) {
  check_bn_act_backward(dy_in, x_in);
  const DeviceGuard guard(x_in.device());
  const View x = view_of(x_in);
  const View dy = view_of(dy_in.to(x_in.scalar_type()));
  Tensor dx = poison(at::empty_like(x.t));
  const View dxv = view_of(dx);
  const int sms = multiprocessors(x_in.device());
  Tensor totals;  // (sum of dz * xhat, sum of dz) per channel: (dweight, dbias)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "bn_act_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto opts = x_in.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const Tensor w = weight.to(opts).contiguous(), b = bias.to(opts).contiguous();
    const Tensor mean = mean_in.to(opts).contiguous(), var = var_in.to(opts).contiguous();
    if (x.t.numel() == 0) {
      totals = at::zeros({2, x.C}, opts);
      return;
    }
    const Plan plan = plan_reduction(x, sms, {&x, &dy, &dxv});
    const Tensor sums = poison(at::empty({2, plan.n_splits, x.C}, opts));
    with_reduction(plan, [&](auto index, auto one_pass) {
      using index_t = decltype(index);
      launch<bn_grad_sums_kernel<scalar_t, acc_t, index_t, decltype(one_pass)::value>>(
          plan.grid(), kThreads, device_ptr<const scalar_t>(dy.t), device_ptr<const scalar_t>(x.t),
          device_ptr<scalar_t>(dx), device_ptr<const acc_t>(mean), device_ptr<const acc_t>(var),
          device_ptr<const acc_t>(w), device_ptr<const acc_t>(b), device_ptr<acc_t>(sums), plan.rows<index_t>(),
          strides<index_t>(dy), strides<index_t>(x), strides<index_t>(dxv), training, acc_t(eps), int(act),
          acc_t(slope));
    });
    if (plan.n_splits == 1) {
      totals = sums.view({2, x.C});
    } else {
      totals = poison(at::empty({2, x.C}, opts));
      launch<sum_splits_kernel<acc_t>>(dim3(unsigned(ceil_div(x.C, kThreads)), 2), kThreads,
                                       device_ptr<const acc_t>(sums), device_ptr<acc_t>(totals), x.C, plan.n_splits);
    }
    if (plan.one_pass) return;
    const Plan ep = plan_elementwise<scalar_t>(x, sms, {&x, &dy, &dxv});
    with_elementwise<scalar_t>(ep, [&](auto index, auto vec, auto pack_rows) {
      using index_t = decltype(index);
      launch<bn_grad_input_kernel<scalar_t, acc_t, index_t, decltype(vec)::value, decltype(pack_rows)::value>>(
          ep.grid(), kThreads, device_ptr<const scalar_t>(dy.t), device_ptr<const scalar_t>(x.t),
          device_ptr<scalar_t>(dx), device_ptr<const acc_t>(mean), device_ptr<const acc_t>(var),
          device_ptr<const acc_t>(w), device_ptr<const acc_t>(b), device_ptr<const acc_t>(totals),
          ep.rows<index_t>(), strides<index_t>(dy), strides<index_t>(x), strides<index_t>(dxv), training,
          acc_t(eps), int(act), acc_t(slope));
    });
  });
  // (dweight, dbias) in the parameters' dtypes.
  return {dx, totals[0].to(weight.scalar_type(), false, /*copy=*/true),
          totals[1].to(bias.scalar_type(), false, /*copy=*/true)};
}

}  // namespace
}  // namespace fusedgan
