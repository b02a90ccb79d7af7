// Per-element math of every fused kernel (normalization, activation, their gradients, the
// Welford merge), written once for the CPU and CUDA kernels (host-device functions), so the
// CPU tests exercise exactly what the GPU runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDGAN_HD __host__ __device__ __forceinline__
#else
#define FUSEDGAN_HD inline
#endif

namespace fusedgan {

// Activation codes, as in fusedgan/_activation.py.
enum Activation : int { kIdentity = 0, kRelu = 1, kLeakyRelu = 2 };

// The same z for forward and for backward's recomputation, so the masks agree exactly.
template <typename T>
FUSEDGAN_HD T pre_activation(T x, T mean, T scale, T bias) {
  return (x - mean) * scale + bias;
}

// ReLU keeps NaN and maps -inf to 0 (torch.relu); LeakyReLU is torch's z > 0 ? z : z * slope.
// Both sides of each select are computed first, so compilers emit a blend, not a branch
// that random signs would mispredict half the time.
template <typename T>
FUSEDGAN_HD T activation(T z, T slope, int act) {
  const T negative = act == kRelu ? T(0) : z * slope;
  if (act == kRelu) return z < T(0) ? negative : z;
  if (act == kLeakyRelu) return z > T(0) ? z : negative;
  return z;
}

// The masks of torch's threshold_backward and leaky_relu_backward.
template <typename T>
FUSEDGAN_HD T activation_grad(T dy, T z, T slope, int act) {
  const T negative = act == kRelu ? T(0) : dy * slope;
  return act == kIdentity || z > T(0) ? dy : negative;
}

// dz = dL/dz from dy = dL/dy at x: z recomputed exactly as forward computed it.
template <typename T>
FUSEDGAN_HD T pre_activation_grad(T dy, T x, T mean, T scale, T bias, T slope, int act) {
  return activation_grad(dy, pre_activation(x, mean, scale, bias), slope, act);
}

// BatchNorm's dx from dz = dL/dz. Training adds the two terms from the batch statistics' dependence on x.
template <typename T>
FUSEDGAN_HD T grad_input(T dz, T xhat, T scale, T mean_dz, T mean_dz_xhat, bool training) {
  return (training ? dz - mean_dz - xhat * mean_dz_xhat : dz) * scale;
}

// GroupNorm's dx from dz = dL/dz: rstd * (weight * dz - mean_wdz - xhat * mean_wdz_xhat),
// the two means taken over the (sample, group) of weight * dz and weight * dz * xhat.
template <typename T>
FUSEDGAN_HD T group_grad_input(T dz, T xhat, T weight, T rstd, T mean_wdz, T mean_wdz_xhat) {
  return (weight * dz - mean_wdz - xhat * mean_wdz_xhat) * rstd;
}

// Chan et al.: merge the statistics (n_b, mean_b, m2_b) of one part into (n, mean, m2).
template <typename T>
FUSEDGAN_HD void welford_merge(T& n, T& mean, T& m2, T n_b, T mean_b, T m2_b) {
  const T total = n + n_b;
  if (total == T(0)) return;
  const T delta = mean_b - mean;
  const T frac = n_b / total;
  mean += delta * frac;
  m2 += m2_b + delta * delta * n * frac;
  n = total;
}

// Host side: calls f(std::integral_constant<int, act>{}), so that kernels get the
// activation as a compile-time constant (no branch in the inner loops; they vectorize).
template <typename F>
void with_activation(int64_t act, F&& f) {
  switch (act) {
    case kRelu: return f(std::integral_constant<int, kRelu>{});
    case kLeakyRelu: return f(std::integral_constant<int, kLeakyRelu>{});
    default: return f(std::integral_constant<int, kIdentity>{});
  }
}

}  // namespace fusedgan
