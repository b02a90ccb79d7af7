// BatchNorm + activation, CUDA kernels (registered for the CUDA dispatch key).
//
// Inputs are read in place through (n, s, c) strides, as the Triton kernels do: row
// r = n * S + s of channel c lives at n * stride_n + s * stride_s + c * stride_c (int64).
// One block per (channel, split of the rows):
//  - one-pass (a single split, R <= kThreads * kItems): the block keeps its channel's
//    slice in registers between the statistics and the output (2N bytes forward, 3N
//    backward);
//  - tiled: each split writes partial (count, mean, M2) or partial sums, a second kernel
//    merges them in split order, and an elementwise kernel writes y or dx, moving 16-byte
//    packs of a contiguous (n, c) run per thread where the layout and alignment allow
//    (NCHW with 16 / sizeof(scalar_t) dividing H * W), one element otherwise.
// Reductions: Welford per thread, then Chan merges through warp shuffles and shared
// memory, in a fixed order (no atomics): bitwise repeatable. Launched on the current
// stream, with no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../bn_act_math.h"
#include "../op_checks.h"
#include "common.cuh"

namespace fusedgan {
namespace {

using at::Tensor;

constexpr int kItems = 16;  // values per thread kept in registers on the one-pass path

// Chan-merge (n, mean, m2) across the block; every thread gets the result.
template <typename acc_t>
__device__ void block_welford(acc_t& n, acc_t& mean, acc_t& m2) {
  __shared__ acc_t sh[3][kWarps];
  for (int delta = 16; delta > 0; delta /= 2) {
    const acc_t n_b = __shfl_down_sync(0xffffffff, n, delta);
    const acc_t mean_b = __shfl_down_sync(0xffffffff, mean, delta);
    const acc_t m2_b = __shfl_down_sync(0xffffffff, m2, delta);
    welford_merge(n, mean, m2, n_b, mean_b, m2_b);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sh[0][warp] = n, sh[1][warp] = mean, sh[2][warp] = m2;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) welford_merge(sh[0][0], sh[1][0], sh[2][0], sh[0][w], sh[1][w], sh[2][w]);
  }
  __syncthreads();
  n = sh[0][0], mean = sh[1][0], m2 = sh[2][0];
  __syncthreads();
}

template <typename scalar_t, typename acc_t, int ACT, bool ONE_PASS>
__global__ void bn_stats_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, const acc_t* __restrict__ w,
                                const acc_t* __restrict__ b, acc_t* __restrict__ mean_out, acc_t* __restrict__ var_out,
                                acc_t* __restrict__ part, int64_t R, int64_t C, int64_t S, Strides xs, Strides ys,
                                int64_t rows_per_split, acc_t eps, acc_t slope) {
  const int64_t c = blockIdx.x, split = blockIdx.y, n_splits = gridDim.y;
  const int64_t r_begin = split * rows_per_split, r_end = min(R, r_begin + rows_per_split);
  acc_t n = 0, mean = 0, m2 = 0;
  acc_t vals[ONE_PASS ? kItems : 1];
  if (ONE_PASS) {
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t r = r_begin + threadIdx.x + int64_t(k) * kThreads;
      vals[k] = r < r_end ? static_cast<acc_t>(x[offset(r, c, S, xs)]) : acc_t(0);
      if (r < r_end) welford_merge<acc_t>(n, mean, m2, 1, vals[k], 0);
    }
  } else {
    for (int64_t r = r_begin + threadIdx.x; r < r_end; r += kThreads)
      welford_merge<acc_t>(n, mean, m2, 1, static_cast<acc_t>(x[offset(r, c, S, xs)]), 0);
  }
  block_welford(n, mean, m2);
  if (!ONE_PASS) {
    if (threadIdx.x == 0) {
      part[split * C + c] = n;
      part[(n_splits + split) * C + c] = mean;
      part[(2 * n_splits + split) * C + c] = m2;
    }
    return;
  }
  const acc_t var = m2 / n;
  if (threadIdx.x == 0) mean_out[c] = mean, var_out[c] = var;
  const acc_t scale = w[c] / sqrt(var + eps), bias = b[c];
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t r = r_begin + threadIdx.x + int64_t(k) * kThreads;
    if (r < r_end)
      y[offset(r, c, S, ys)] = static_cast<scalar_t>(activation(pre_activation(vals[k], mean, scale, bias), slope, ACT));
  }
}

template <typename acc_t>
__global__ void bn_stats_merge_kernel(const acc_t* __restrict__ part, acc_t* __restrict__ mean_out,
                                      acc_t* __restrict__ var_out, int64_t C, int64_t n_splits) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  acc_t n = 0, mean = 0, m2 = 0;
  for (int64_t i = 0; i < n_splits; ++i)
    welford_merge(n, mean, m2, part[i * C + c], part[(n_splits + i) * C + c], part[(2 * n_splits + i) * C + c]);
  mean_out[c] = mean;
  var_out[c] = m2 / n;
}

// Elementwise kernels: step g covers logical elements [g * VEC, g * VEC + VEC) of the
// (n, c, s) order, which lie in one (n, c) run because VEC divides S.
template <typename scalar_t, typename acc_t, int ACT, int VEC>
__global__ void bn_act_apply_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                    const acc_t* __restrict__ mean, const acc_t* __restrict__ var,
                                    const acc_t* __restrict__ w, const acc_t* __restrict__ b, int64_t total, int64_t C,
                                    int64_t S, Strides xs, Strides ys, acc_t eps, acc_t slope) {
  using P = Pack<scalar_t, VEC>;
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < total / VEC;
       g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = g * VEC, c = (i / S) % C, r = (i / (S * C)) * S + i % S;
    const acc_t scale = w[c] / sqrt(var[c] + eps), shift = mean[c], bias = b[c];
    const P in = *reinterpret_cast<const P*>(x + offset(r, c, S, xs));
    P out;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      out.v[k] = static_cast<scalar_t>(
          activation(pre_activation<acc_t>(static_cast<acc_t>(in.v[k]), shift, scale, bias), slope, ACT));
    *reinterpret_cast<P*>(y + offset(r, c, S, ys)) = out;
  }
}

// Sums of dz and dz * xhat (dbias, dweight) for one (channel, split); one-pass also writes dx.
template <typename scalar_t, typename acc_t, int ACT, bool ONE_PASS>
__global__ void bn_act_grad_sums_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                        scalar_t* __restrict__ dx, const acc_t* __restrict__ mean_in,
                                        const acc_t* __restrict__ var_in, const acc_t* __restrict__ w,
                                        const acc_t* __restrict__ b, acc_t* __restrict__ sums, int64_t R, int64_t C,
                                        int64_t S, Strides dys, Strides xs, Strides dxs, int64_t rows_per_split,
                                        bool training, acc_t eps, acc_t slope) {
  const int64_t c = blockIdx.x, split = blockIdx.y, n_splits = gridDim.y;
  const int64_t r_begin = split * rows_per_split, r_end = min(R, r_begin + rows_per_split);
  const acc_t mean = mean_in[c], invstd = acc_t(1) / sqrt(var_in[c] + eps), scale = w[c] * invstd, bias = b[c];
  acc_t sum_dz = 0, sum_dz_xhat = 0;
  acc_t dzs[ONE_PASS ? kItems : 1], xhats[ONE_PASS ? kItems : 1];
  const auto accumulate = [&](int64_t r, acc_t& dz, acc_t& xhat) {
    const acc_t xv = static_cast<acc_t>(x[offset(r, c, S, xs)]);
    xhat = (xv - mean) * invstd;
    dz = activation_grad<acc_t>(static_cast<acc_t>(dy[offset(r, c, S, dys)]), pre_activation(xv, mean, scale, bias),
                                slope, ACT);
    sum_dz += dz;
    sum_dz_xhat += dz * xhat;
  };
  if (ONE_PASS) {
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t r = r_begin + threadIdx.x + int64_t(k) * kThreads;
      dzs[k] = xhats[k] = 0;
      if (r < r_end) accumulate(r, dzs[k], xhats[k]);
    }
  } else {
    acc_t dz, xhat;
    for (int64_t r = r_begin + threadIdx.x; r < r_end; r += kThreads) accumulate(r, dz, xhat);
  }
  block_sum2(sum_dz, sum_dz_xhat);
  if (threadIdx.x == 0) {
    sums[split * C + c] = sum_dz_xhat;  // rows 0 / 1 of the (2, n_splits, C) partials
    sums[(n_splits + split) * C + c] = sum_dz;
  }
  if (ONE_PASS) {
    const acc_t mean_dz = sum_dz / R, mean_dz_xhat = sum_dz_xhat / R;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t r = r_begin + threadIdx.x + int64_t(k) * kThreads;
      if (r < r_end)
        dx[offset(r, c, S, dxs)] =
            static_cast<scalar_t>(grad_input(dzs[k], xhats[k], scale, mean_dz, mean_dz_xhat, training));
    }
  }
}

template <typename acc_t>
__global__ void bn_grad_sums_merge_kernel(acc_t* __restrict__ sums, int64_t C, int64_t n_splits) {
  // In place: row 0 of each half becomes the total over splits, added in split order.
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  acc_t dw = 0, db = 0;
  for (int64_t i = 0; i < n_splits; ++i) dw += sums[i * C + c], db += sums[(n_splits + i) * C + c];
  sums[c] = dw;
  sums[n_splits * C + c] = db;
}

template <typename scalar_t, typename acc_t, int ACT, int VEC>
__global__ void bn_act_grad_input_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                         scalar_t* __restrict__ dx, const acc_t* __restrict__ mean_in,
                                         const acc_t* __restrict__ var_in, const acc_t* __restrict__ w,
                                         const acc_t* __restrict__ b, const acc_t* __restrict__ sum_dz_xhat,
                                         const acc_t* __restrict__ sum_dz, int64_t total, int64_t R, int64_t C,
                                         int64_t S, Strides dys, Strides xs, Strides dxs, bool training, acc_t eps,
                                         acc_t slope) {
  using P = Pack<scalar_t, VEC>;
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < total / VEC;
       g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = g * VEC, c = (i / S) % C, r = (i / (S * C)) * S + i % S;
    const acc_t mean = mean_in[c], invstd = acc_t(1) / sqrt(var_in[c] + eps), scale = w[c] * invstd, bias = b[c];
    const acc_t mean_dz = sum_dz[c] / R, mean_dz_xhat = sum_dz_xhat[c] / R;
    const P xp = *reinterpret_cast<const P*>(x + offset(r, c, S, xs));
    const P dyp = *reinterpret_cast<const P*>(dy + offset(r, c, S, dys));
    P out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t xv = static_cast<acc_t>(xp.v[k]);
      const acc_t dz = activation_grad<acc_t>(static_cast<acc_t>(dyp.v[k]), pre_activation(xv, mean, scale, bias),
                                              slope, ACT);
      out.v[k] = static_cast<scalar_t>(grad_input(dz, (xv - mean) * invstd, scale, mean_dz, mean_dz_xhat, training));
    }
    *reinterpret_cast<P*>(dx + offset(r, c, S, dxs)) = out;
  }
}

// ---------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------

struct Plan {
  bool one_pass;
  int64_t n_splits, rows_per_split;
};

Plan plan_for(int64_t R, int64_t C, const Tensor& x) {
  if (R <= int64_t(kThreads) * kItems) return {true, 1, R};
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  // Enough blocks to fill the GPU a few times over, each with at least kThreads * 4 rows.
  int64_t n_splits = std::max<int64_t>(1, std::min<int64_t>((4 * sms + C - 1) / C, R / (kThreads * 4)));
  n_splits = std::min<int64_t>(n_splits, 65535);
  const int64_t rows = (R + n_splits - 1) / n_splits;
  return {false, (R + rows - 1) / rows, rows};
}

std::tuple<Tensor, Tensor, Tensor> bn_act_forward_cuda(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                                                       const std::optional<Tensor>& mean_in,
                                                       const std::optional<Tensor>& var_in, bool training, double eps,
                                                       int64_t act, double slope) {
  check_bn_act_forward(x_in, training, mean_in, var_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const View v = view_of(x_in);
  Tensor y = at::empty_like(v.t);
  const View yv = view_of(y);
  const int64_t R = v.N * v.S, C = v.C;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  Tensor mean, var;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "bn_act_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto opts = x_in.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const Tensor w = weight.to(opts).contiguous(), b = bias.to(opts).contiguous();
    with_activation(act, [&](auto a) {
      constexpr int A = decltype(a)::value;
      if (training) {
        mean = at::empty({C}, opts);
        var = at::empty({C}, opts);
        if (R == 0) {
          mean.zero_(), var.zero_();
          return;
        }
        const Plan plan = plan_for(R, C, x_in);
        const dim3 grid(C, plan.n_splits);
        if (plan.one_pass) {
          bn_stats_kernel<scalar_t, acc_t, A, true><<<grid, kThreads, 0, stream>>>(
              v.t.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), b.data_ptr<acc_t>(),
              mean.data_ptr<acc_t>(), var.data_ptr<acc_t>(), nullptr, R, C, v.S, v.st, yv.st, plan.rows_per_split,
              static_cast<acc_t>(eps), static_cast<acc_t>(slope));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          return;
        }
        Tensor part = at::empty({3, plan.n_splits, C}, opts);
        bn_stats_kernel<scalar_t, acc_t, A, false><<<grid, kThreads, 0, stream>>>(
            v.t.data_ptr<scalar_t>(), nullptr, nullptr, nullptr, nullptr, nullptr, part.data_ptr<acc_t>(), R, C, v.S,
            v.st, yv.st, plan.rows_per_split, static_cast<acc_t>(eps), static_cast<acc_t>(slope));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        bn_stats_merge_kernel<acc_t><<<(C + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
            part.data_ptr<acc_t>(), mean.data_ptr<acc_t>(), var.data_ptr<acc_t>(), C, plan.n_splits);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        mean = mean_in->to(opts, false, /*copy=*/true);
        var = var_in->to(opts, false, /*copy=*/true);
      }
      const int64_t total = v.t.numel();
      if (total == 0) return;
      const int vec = vector_width<scalar_t>(v.S, {{v.t.data_ptr(), v.st}, {y.data_ptr(), yv.st}});
      with_vector_width<scalar_t>(vec, [&](auto width) {
        constexpr int VEC = decltype(width)::value;
        bn_act_apply_kernel<scalar_t, acc_t, A, VEC><<<elementwise_blocks(total / VEC), kThreads, 0, stream>>>(
            v.t.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), mean.data_ptr<acc_t>(), var.data_ptr<acc_t>(),
            w.data_ptr<acc_t>(), b.data_ptr<acc_t>(), total, C, v.S, v.st, yv.st, static_cast<acc_t>(eps),
            static_cast<acc_t>(slope));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return {y, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> bn_act_backward_cuda(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight,
                                                        const Tensor& bias, const Tensor& mean_in, const Tensor& var_in,
                                                        bool training, double eps, int64_t act, double slope) {
  check_bn_act_backward(dy_in, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const View v = view_of(x_in);
  const View dyv = view_of(dy_in.to(x_in.scalar_type()));
  Tensor dx = at::empty_like(v.t);
  const View dxv = view_of(dx);
  const int64_t R = v.N * v.S, C = v.C;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  Tensor sums;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "bn_act_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto opts = x_in.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const Tensor w = weight.to(opts).contiguous(), b = bias.to(opts).contiguous();
    const Tensor mean = mean_in.to(opts).contiguous(), var = var_in.to(opts).contiguous();
    if (R == 0) {
      sums = at::zeros({2, 1, C}, opts);
      return;
    }
    const Plan plan = plan_for(R, C, x_in);
    sums = at::empty({2, plan.n_splits, C}, opts);
    const dim3 grid(C, plan.n_splits);
    with_activation(act, [&](auto a) {
      constexpr int A = decltype(a)::value;
      const auto launch = [&](auto one_pass) {
        bn_act_grad_sums_kernel<scalar_t, acc_t, A, decltype(one_pass)::value><<<grid, kThreads, 0, stream>>>(
            dyv.t.data_ptr<scalar_t>(), v.t.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), mean.data_ptr<acc_t>(),
            var.data_ptr<acc_t>(), w.data_ptr<acc_t>(), b.data_ptr<acc_t>(), sums.data_ptr<acc_t>(), R, C, v.S,
            dyv.st, v.st, dxv.st, plan.rows_per_split, training, static_cast<acc_t>(eps), static_cast<acc_t>(slope));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (plan.one_pass) {
        launch(std::true_type{});
        return;
      }
      launch(std::false_type{});
      bn_grad_sums_merge_kernel<acc_t><<<(C + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          sums.data_ptr<acc_t>(), C, plan.n_splits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t total = v.t.numel();
      const int vec = vector_width<scalar_t>(
          v.S, {{dyv.t.data_ptr(), dyv.st}, {v.t.data_ptr(), v.st}, {dx.data_ptr(), dxv.st}});
      with_vector_width<scalar_t>(vec, [&](auto width) {
        constexpr int VEC = decltype(width)::value;
        bn_act_grad_input_kernel<scalar_t, acc_t, A, VEC><<<elementwise_blocks(total / VEC), kThreads, 0, stream>>>(
            dyv.t.data_ptr<scalar_t>(), v.t.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), mean.data_ptr<acc_t>(),
            var.data_ptr<acc_t>(), w.data_ptr<acc_t>(), b.data_ptr<acc_t>(), sums.data_ptr<acc_t>(),
            sums.data_ptr<acc_t>() + plan.n_splits * C, total, R, C, v.S, dyv.st, v.st, dxv.st, training,
            static_cast<acc_t>(eps), static_cast<acc_t>(slope));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  // Row 0 of each half holds the totals: (dweight, dbias) in the parameters' dtype.
  return {dx, sums[0][0].to(weight.scalar_type(), false, /*copy=*/true),
          sums[1][0].to(bias.scalar_type(), false, /*copy=*/true)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedgan, CUDA, m) {
  m.impl("bn_act_forward", &bn_act_forward_cuda);
  m.impl("bn_act_backward", &bn_act_backward_cuda);
}

}  // namespace fusedgan
