// GroupNorm / InstanceNorm + activation: the launchers of the CUDA kernels (host code of both
// builds, see host.h): per-sample reductions (host.h, plan_reduction), workspaces, merges, and the elementwise
// pass with BatchNorm's plans. Launched on the current stream, with no host synchronisation.
//
// Forward, one-pass: gn_channel_stats_kernel<ONE_PASS> (x -> y, mean, var).
//          tiled:    gn_channel_stats_kernel (x) -> gn_stats_merge_kernel -> gn_apply_kernel (x -> y).
// Backward, one-pass: gn_grad_sums_kernel<ONE_PASS> (x, dy -> dx) -> sum_splits_kernel over samples
//                     (dweight, dbias).
//           tiled:    gn_grad_sums_kernel (x, dy) -> [sum_splits_kernel over splits] ->
//                     sum_splits_kernel over samples (dweight, dbias), gn_grad_merge_kernel ->
//                     gn_grad_input_kernel (x, dy -> dx).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <tuple>

#include "../op_checks.h"
#include "host.h"
#include "group_norm_act_kernels.cuh"

namespace fusedgan {
namespace {

// Blocks of the merge kernels: one thread per (sample, group) or channel.
unsigned merge_blocks(int64_t n) { return unsigned(ceil_div(n, kThreads)); }

std::tuple<Tensor, Tensor, Tensor> gn_act_forward_cuda(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                                                       int64_t groups, double eps, int64_t act, double slope) {
  check_gn_act(x_in, groups);
  const DeviceGuard guard(x_in.device());
  const View x = view_of(x_in);
  Tensor y = poison(at::empty_like(x.t));
  const View yv = view_of(y);
  const int sms = multiprocessors(x_in.device());
  const int64_t G = groups, Cg = x.C / groups, NG = x.N * G;
  Tensor mean, var;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "gn_act_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto opts = x_in.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    if (x.t.numel() == 0) {  // an empty batch, or empty samples: nothing to launch
      mean = at::zeros({x.N, G}, opts), var = at::zeros({x.N, G}, opts);
      return;
    }
    mean = poison(at::empty({x.N, G}, opts));
    var = poison(at::empty({x.N, G}, opts));
    const Tensor w = weight.to(opts).contiguous(), b = bias.to(opts).contiguous();
    const Plan rp = plan_reduction(x, sms, {&x, &yv}, Cg);
    const Tensor part = rp.one_pass ? Tensor() : poison(at::empty({3, rp.n_splits, x.N * x.C}, opts));
    with_reduction(rp, [&](auto index, auto one_pass) {
      using index_t = decltype(index);
      launch<gn_channel_stats_kernel<scalar_t, acc_t, index_t, decltype(one_pass)::value>>(
          rp.grid(), kThreads, device_ptr<const scalar_t>(x.t), device_ptr<scalar_t>(y), device_ptr<const acc_t>(w),
          device_ptr<const acc_t>(b), device_ptr<acc_t>(mean), device_ptr<acc_t>(var), optional_ptr<acc_t>(part),
          rp.rows<index_t>(), strides<index_t>(x), strides<index_t>(yv), unsigned(rp.sample_c_blocks), x.N,
          index_t(G), int(Cg), acc_t(eps), int(act), acc_t(slope));
    });
    if (rp.one_pass) return;  // y written too
    const Tensor rstd = poison(at::empty({NG}, opts));
    launch<gn_stats_merge_kernel<scalar_t, acc_t>>(
        dim3(merge_blocks(NG)), kThreads, device_ptr<const acc_t>(part), device_ptr<const scalar_t>(x.t),
        strides<int64_t>(x), device_ptr<acc_t>(mean), device_ptr<acc_t>(var), device_ptr<acc_t>(rstd),
        FastDivider<int64_t>(G), NG, Cg, rp.n_splits, acc_t(eps));
    const Plan plan = plan_elementwise<scalar_t>(x, sms, {&x, &yv});
    with_elementwise<scalar_t>(plan, [&](auto index, auto vec, auto pack_rows) {
      using index_t = decltype(index);
      launch<gn_apply_kernel<scalar_t, acc_t, index_t, decltype(vec)::value, decltype(pack_rows)::value>>(
          plan.grid(), kThreads, device_ptr<const scalar_t>(x.t), device_ptr<scalar_t>(y),
          device_ptr<const acc_t>(mean), device_ptr<const acc_t>(rstd), device_ptr<const acc_t>(w),
          device_ptr<const acc_t>(b), plan.rows<index_t>(), strides<index_t>(x), strides<index_t>(yv), index_t(G),
          int(Cg), int(act), acc_t(slope));
    });
  });
  return {y, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> gn_act_backward_cuda(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight,
                                                        const Tensor& bias, const Tensor& mean_in, const Tensor& var_in,
                                                        int64_t groups, double eps, int64_t act, double slope) {
  check_gn_act(x_in, groups);
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), "fusedgan::gn_act_backward: grad and input shapes differ");
  const DeviceGuard guard(x_in.device());
  const View x = view_of(x_in);
  const View dy = view_of(dy_in.to(x_in.scalar_type()));
  Tensor dx = poison(at::empty_like(x.t));
  const View dxv = view_of(dx);
  const int sms = multiprocessors(x_in.device());
  const int64_t G = groups, Cg = x.C / groups, NG = x.N * G, NC = x.N * x.C;
  Tensor params;  // (sum of dz * xhat, sum of dz) per channel: (dweight, dbias)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "gn_act_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto opts = x_in.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    if (x.t.numel() == 0) {
      params = at::zeros({2, x.C}, opts);
      return;
    }
    const Tensor w = weight.to(opts).contiguous(), b = bias.to(opts).contiguous();
    const Tensor mean = mean_in.to(opts).contiguous(), var = var_in.to(opts).contiguous();
    // 1. Per-(sample, channel) sums, per split; their totals (2, N * C) in split order.
    // One-pass: dx too.
    const Plan rp = plan_reduction(x, sms, {&x, &dy, &dxv}, Cg);
    const Tensor sums = poison(at::empty({2, rp.n_splits, NC}, opts));
    with_reduction(rp, [&](auto index, auto one_pass) {
      using index_t = decltype(index);
      launch<gn_grad_sums_kernel<scalar_t, acc_t, index_t, decltype(one_pass)::value>>(
          rp.grid(), kThreads, device_ptr<const scalar_t>(dy.t), device_ptr<const scalar_t>(x.t),
          device_ptr<scalar_t>(dx), device_ptr<const acc_t>(mean), device_ptr<const acc_t>(var),
          device_ptr<const acc_t>(w), device_ptr<const acc_t>(b), device_ptr<acc_t>(sums), rp.rows<index_t>(),
          strides<index_t>(dy), strides<index_t>(x), strides<index_t>(dxv), unsigned(rp.sample_c_blocks), x.N,
          index_t(G), int(Cg), acc_t(Cg * x.S), acc_t(eps), int(act), acc_t(slope));
    });
    Tensor totals = rp.n_splits == 1 ? sums.view({2, NC}) : poison(at::empty({2, NC}, opts));
    if (rp.n_splits > 1) {
      launch<sum_splits_kernel<acc_t>>(dim3(merge_blocks(NC), 2), kThreads, device_ptr<const acc_t>(sums),
                                       device_ptr<acc_t>(totals), NC, rp.n_splits);
    }
    // 2. Per channel: dweight and dbias, the totals (2, N, C) summed over samples in order.
    params = poison(at::empty({2, x.C}, opts));
    launch<sum_splits_kernel<acc_t>>(dim3(merge_blocks(x.C), 2), kThreads, device_ptr<const acc_t>(totals),
                                     device_ptr<acc_t>(params), x.C, x.N);
    if (rp.one_pass) return;  // dx written too
    // 3. Per (sample, group): rstd and the means of w * dz and w * dz * xhat.
    const Tensor group = poison(at::empty({3, NG}, opts));
    launch<gn_grad_merge_kernel<acc_t>>(dim3(merge_blocks(NG)), kThreads, device_ptr<const acc_t>(totals),
                                        device_ptr<const acc_t>(var), device_ptr<const acc_t>(w),
                                        device_ptr<acc_t>(group), NG, Cg, FastDivider<int64_t>(G),
                                        acc_t(Cg * x.S), acc_t(eps));
    // 4. dx, elementwise.
    const Plan ep = plan_elementwise<scalar_t>(x, sms, {&x, &dy, &dxv});
    with_elementwise<scalar_t>(ep, [&](auto index, auto vec, auto pack_rows) {
      using index_t = decltype(index);
      launch<gn_grad_input_kernel<scalar_t, acc_t, index_t, decltype(vec)::value, decltype(pack_rows)::value>>(
          ep.grid(), kThreads, device_ptr<const scalar_t>(dy.t), device_ptr<const scalar_t>(x.t),
          device_ptr<scalar_t>(dx), device_ptr<const acc_t>(mean), device_ptr<const acc_t>(group),
          device_ptr<const acc_t>(w), device_ptr<const acc_t>(b), ep.rows<index_t>(), strides<index_t>(dy),
          strides<index_t>(x), strides<index_t>(dxv), index_t(G), index_t(NG), int(Cg), int(act), acc_t(slope));
    });
  });
  // (dweight, dbias) in the parameters' dtypes.
  return {dx, params[0].to(weight.scalar_type(), false, /*copy=*/true),
          params[1].to(bias.scalar_type(), false, /*copy=*/true)};
}

}  // namespace
}  // namespace fusedgan
