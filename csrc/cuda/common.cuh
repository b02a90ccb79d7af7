// Shared by the CUDA kernels: (n, s, c) strided addressing, block reductions, launch sizes.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

namespace fusedgan {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct Strides {
  int64_t n, s, c;
};

__device__ __forceinline__ int64_t offset(int64_t r, int64_t c, int64_t S, Strides st) {
  return (r / S) * st.n + (r % S) * st.s + c * st.c;
}

// Sum two values across the block; every thread gets the results.
template <typename acc_t>
__device__ void block_sum2(acc_t& a, acc_t& b) {
  __shared__ acc_t sh[2][kWarps];
  for (int delta = 16; delta > 0; delta /= 2) {
    a += __shfl_down_sync(0xffffffff, a, delta);
    b += __shfl_down_sync(0xffffffff, b, delta);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sh[0][warp] = a, sh[1][warp] = b;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) sh[0][0] += sh[0][w], sh[1][0] += sh[1][w];
  }
  __syncthreads();
  a = sh[0][0], b = sh[1][0];
  __syncthreads();
}

// (t, N, C, S, strides): t itself when its spatial dimensions walk with one stride.
struct View {
  Tensor t;
  int64_t N, C, S;
  Strides st;
};

View view_of(const Tensor& t_in) {
  Tensor t = t_in;
  int64_t stride_s = 1, expected = -1;
  bool ok = true;
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) == 1) continue;
    if (expected == -1) stride_s = t.stride(d);
    else if (t.stride(d) != expected) ok = false;
    expected = t.stride(d) * t.size(d);
  }
  if (!ok) t = t.contiguous(), stride_s = 1;
  const int64_t N = t.size(0), C = t.size(1), S = t.numel() / std::max<int64_t>(N * C, 1);
  return {t, N, C, S, {t.stride(0), stride_s, t.stride(1)}};
}

// VEC consecutive elements, moved as one access (16 bytes when VEC = 16 / sizeof).
template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// 16 / sizeof(scalar_t) when every tensor's (n, c) runs are contiguous, VEC divides S and
// the strides, and the pointers are 16-byte aligned, so a run splits into aligned 16-byte
// packs; else 1. Each entry is (data pointer, strides).
template <typename scalar_t>
int vector_width(int64_t S, std::initializer_list<std::pair<const void*, Strides>> tensors) {
  constexpr int kWide = 16 / sizeof(scalar_t);
  if (S % kWide) return 1;
  for (const auto& [ptr, st] : tensors) {
    if (st.s != 1 || st.n % kWide || st.c % kWide || reinterpret_cast<std::uintptr_t>(ptr) % 16) return 1;
  }
  return kWide;
}

// Calls f with std::integral_constant<int, VEC> for the width vector_width chose.
template <typename scalar_t, typename F>
void with_vector_width(int vec, F&& f) {
  constexpr int kWide = 16 / sizeof(scalar_t);
  if (vec == kWide) f(std::integral_constant<int, kWide>{});
  else f(std::integral_constant<int, 1>{});
}

int elementwise_blocks(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8));
}

}  // namespace
}  // namespace fusedgan
