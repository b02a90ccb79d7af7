// Conv2d + bias + LeakyReLU, CUDA kernels: torch's convolution (cuDNN) without bias, then
// one in-place pass for bias + activation; backward's dy -> dz step with dbias reduced per
// channel in the same pass (one block per channel, fixed-order reduction, no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../bn_act_math.h"
#include "common.cuh"

namespace fusedgan {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void bias_leaky_relu_kernel(scalar_t* __restrict__ y, const acc_t* __restrict__ bias, int64_t total,
                                       int64_t C, int64_t S, Strides st, acc_t slope) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / S) % C, r = (i / (S * C)) * S + i % S;
    scalar_t* p = y + offset(r, c, S, st);
    *p = static_cast<scalar_t>(activation<acc_t>(static_cast<acc_t>(*p) + bias[c], slope, kLeakyRelu));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void leaky_relu_grad_bias_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y,
                                            scalar_t* __restrict__ dz, acc_t* __restrict__ db, int64_t R, int64_t S,
                                            Strides dys, Strides ys, Strides dzs, acc_t slope) {
  const int64_t c = blockIdx.x;
  acc_t sum = 0, unused = 0;
  for (int64_t r = threadIdx.x; r < R; r += kThreads) {
    const acc_t d = activation_grad<acc_t>(static_cast<acc_t>(dy[offset(r, c, S, dys)]),
                                           static_cast<acc_t>(y[offset(r, c, S, ys)]), slope, kLeakyRelu);
    dz[offset(r, c, S, dzs)] = static_cast<scalar_t>(d);
    sum += d;
  }
  block_sum2(sum, unused);
  if (db != nullptr && threadIdx.x == 0) db[c] = sum;
}

Tensor conv_leaky_relu_forward_cuda(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups, double slope) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor z = at::convolution(x, weight, std::nullopt, stride, padding, dilation, false, {0, 0}, groups);
  const View v = view_of(z);
  Tensor y = v.t;  // the convolution's own output, updated in place
  const int64_t total = y.numel();
  if (total == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "conv_leaky_relu_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto opts = y.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const Tensor b = bias.has_value() ? bias->to(opts).contiguous() : at::zeros({v.C}, opts);
    bias_leaky_relu_kernel<scalar_t, acc_t><<<elementwise_blocks(total), kThreads, 0,
                                             c10::cuda::getCurrentCUDAStream()>>>(
        y.data_ptr<scalar_t>(), b.data_ptr<acc_t>(), total, v.C, v.S, v.st, static_cast<acc_t>(slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<Tensor, Tensor> leaky_relu_grad_bias_cuda(const Tensor& dy_in, const Tensor& y_in, double slope,
                                                     bool has_bias) {
  TORCH_CHECK(dy_in.sizes() == y_in.sizes(), "fusedgan::leaky_relu_grad_bias: grad and output shapes differ");
  const c10::cuda::CUDAGuard guard(y_in.device());
  const View yv = view_of(y_in);
  const View dyv = view_of(dy_in.to(y_in.scalar_type()));
  Tensor dz = at::empty_like(yv.t);
  const View dzv = view_of(dz);
  const auto acc_dtype = y_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor db = at::zeros({has_bias ? yv.C : 0}, y_in.options().dtype(acc_dtype));
  if (yv.C == 0 || yv.N * yv.S == 0) return {dz, db};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y_in.scalar_type(), "leaky_relu_grad_bias_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    leaky_relu_grad_bias_kernel<scalar_t, acc_t><<<yv.C, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        dyv.t.data_ptr<scalar_t>(), yv.t.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(),
        has_bias ? db.data_ptr<acc_t>() : nullptr, yv.N * yv.S, yv.S, dyv.st, yv.st, dzv.st, static_cast<acc_t>(slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dz, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedgan, CUDA, m) {
  m.impl("conv_leaky_relu_forward", &conv_leaky_relu_forward_cuda);
  m.impl("leaky_relu_grad_bias", &leaky_relu_grad_bias_cuda);
}

}  // namespace fusedgan
