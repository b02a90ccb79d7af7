// What the CUDA kernels share on the device side, for both builds: nvcc for the GPU, and
// the host compiler with csrc/simt/simt.h (FUSEDGAN_SIMT) for the emulated backend. Needs
// neither torch nor the CUDA runtime headers.
//
// How the kernels walk an (N, C, *) tensor: as R = N * S rows (S = the product of the
// spatial sizes) by C channels, each tensor through its own (n, s, c) strides. A block owns a
// group of channels and a split of the rows; its threads are (channel lane, row lane) pairs,
// 2^c_shift channel lanes (1 when rows are the unit-stride axis, as in NCHW; up to 32 when
// channels are, as in channels_last or (N, C), so a warp reads 32 adjacent channels). A
// thread's rows are a Cursor (r, n, s) advanced by a fixed step: the (n, s) of the step is
// divided out once per thread, by a FastDivider, so no integer division runs per element.
#pragma once

#include <cstdint>
#include <type_traits>

#ifdef FUSEDGAN_SIMT
#include <cmath>

#include "../simt/simt.h"
#define FUSEDGAN_DEVICE inline
#define FUSEDGAN_UNROLL _Pragma("GCC unroll 16")  // loops of constant trip count <= 16, unrolled
#else
#define FUSEDGAN_DEVICE __device__ __forceinline__
#define FUSEDGAN_UNROLL _Pragma("unroll")
#endif

#include "../kernel_math.h"

namespace fusedgan {

template <typename T>
using identity_t = T;

namespace {

#ifdef FUSEDGAN_SIMT
using std::sqrt;
template <typename T>
using dptr = simt::Ptr<T>;
using simt::load_as;
using simt::store_as;
#else
// Global memory: a kernel's pointers never alias (outputs are fresh tensors).
template <typename T>
using dptr = T* __restrict__;
template <typename U, typename T>
__device__ __forceinline__ U load_as(const T* p) {
  return *reinterpret_cast<const U*>(p);
}
template <typename U, typename T>
__device__ __forceinline__ void store_as(T* p, const U& value) {
  *reinterpret_cast<U*>(p) = value;
}
#define FUSEDGAN_SHARED(name, ...) __shared__ ::fusedgan::identity_t<__VA_ARGS__> name
#endif

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 16;  // rows a reduction thread loads at a time (one-pass: keeps in registers)
constexpr int kUnroll = 4;  // accesses an elementwise thread issues before it computes

template <typename T>
FUSEDGAN_DEVICE T min_of(T a, T b) {
  return b < a ? b : a;
}

// n / d without a division instruction: (hi(n * magic) + n) >> shift, with magic and shift
// chosen on the host (the round-up method of Granlund and Montgomery). Exact for
// 0 <= n < 2^31 (int32) or 2^63 (int64) and d >= 1: there hi + n cannot overflow.
template <typename index_t>
struct FastDivider {
  using U = std::make_unsigned_t<index_t>;
  index_t divisor;
  U magic;
  int shift;

  FastDivider() = default;
  explicit FastDivider(index_t d) : divisor(d), shift(0) {
    while ((U(1) << shift) < U(d)) ++shift;
    if constexpr (sizeof(U) == 4) {
      magic = U(((std::uint64_t(1) << 32) * ((std::uint64_t(1) << shift) - std::uint64_t(d))) / std::uint64_t(d) + 1);
    } else {
      using W = unsigned __int128;
      magic = U(((W(1) << 64) * ((W(1) << shift) - W(d))) / W(d) + 1);
    }
  }

  static FUSEDGAN_DEVICE U high(U a, U b) {
#if defined(__CUDA_ARCH__)
    if constexpr (sizeof(U) == 4) return __umulhi(a, b);
    else return __umul64hi(a, b);
#else
    if constexpr (sizeof(U) == 4) return U((std::uint64_t(a) * b) >> 32);
    else return U((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
  }
  FUSEDGAN_DEVICE index_t div(index_t n) const { return index_t((high(U(n), magic) + U(n)) >> shift); }
};

// One tensor's element strides along n, s and c.
template <typename index_t>
struct Strides {
  index_t n, s, c;
};

// Row r = n * S + s of one channel, walked by a thread.
template <typename index_t>
struct Cursor {
  index_t r, n, s;
  // The offset of this row's element of channel 0 (add c * stride c).
  FUSEDGAN_DEVICE index_t offset(const Strides<index_t>& st) const { return n * st.n + s * st.s; }
};

// A launch's rows: R = N * S of them, split into parts of rows_per_split (grid axis y);
// C channels in blocks of 2^c_shift * (channels a thread holds) (grid axis x).
template <typename index_t>
struct Rows {
  index_t R, S, C, rows_per_split;
  FastDivider<index_t> by_S;
  int c_shift;

  FUSEDGAN_DEVICE index_t split_begin() const { return index_t(blockIdx.y) * rows_per_split; }
  FUSEDGAN_DEVICE index_t split_end() const { return min_of(R, split_begin() + rows_per_split); }
  FUSEDGAN_DEVICE int lane_c() const { return int(threadIdx.x) & ((1 << c_shift) - 1); }
  FUSEDGAN_DEVICE int lane_r() const { return int(threadIdx.x) >> c_shift; }
  FUSEDGAN_DEVICE int row_lanes() const { return kThreads >> c_shift; }
  // The first channel of this thread, which holds `per_thread` adjacent channels.
  FUSEDGAN_DEVICE index_t channel(int per_thread) const {
    return ((index_t(blockIdx.x) << c_shift) + lane_c()) * per_thread;
  }
  FUSEDGAN_DEVICE Cursor<index_t> at(index_t r) const {
    const index_t n = by_S.div(r);
    return {r, n, r - n * S};
  }
  // cur moved on by `step` rows, given as at(step).
  FUSEDGAN_DEVICE void advance(Cursor<index_t>& cur, const Cursor<index_t>& step) const {
    cur.r += step.r;
    cur.n += step.n;
    cur.s += step.s;
    if (cur.s >= S) cur.s -= S, ++cur.n;
  }
};

// An elementwise thread's walk over its rows of the block's split: `load(cursor)` gathers
// one access (what to compute from, where to write) for up to kUnroll rows before
// `compute(access)` runs on each, so that kUnroll accesses are in flight together. A thread's
// rows start at its row lane times ROW_VEC (the elements of an access along rows) and step
// by the block's row lanes times ROW_VEC.
template <int ROW_VEC, typename index_t, typename Load, typename Compute>
FUSEDGAN_DEVICE void walk_rows(const Rows<index_t>& rows, Load load, Compute compute) {
  const index_t r_end = rows.split_end();
  Cursor<index_t> cur = rows.at(rows.split_begin() + rows.lane_r() * ROW_VEC);
  const Cursor<index_t> step = rows.at(rows.row_lanes() * ROW_VEC);
  while (cur.r < r_end) {
    decltype(load(cur)) access[kUnroll] = {};
    bool valid[kUnroll];
    FUSEDGAN_UNROLL
    for (int u = 0; u < kUnroll; ++u) {
      valid[u] = cur.r < r_end;
      if (valid[u]) access[u] = load(cur);
      rows.advance(cur, step);
    }
    FUSEDGAN_UNROLL
    for (int u = 0; u < kUnroll; ++u)
      if (valid[u]) compute(access[u]);
  }
}

// VEC consecutive elements, moved as one access (16 bytes when VEC = 16 / sizeof).
template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  using value_type = scalar_t;
  static constexpr int size = VEC;
  scalar_t v[VEC];
};

// Stores at dst the pack P whose element j is f(j, q), q the element's channel slot: j when
// the pack runs along channels, 0 when it runs along the rows of one channel (PACK_ROWS).
template <typename P, bool PACK_ROWS, typename Ptr, typename F>
FUSEDGAN_DEVICE void store_pack(Ptr dst, F&& f) {
  P out;
  FUSEDGAN_UNROLL
  for (int j = 0; j < P::size; ++j) out.v[j] = static_cast<typename P::value_type>(f(j, PACK_ROWS ? 0 : j));
  store_as(dst, out);
}

// K accumulators per thread, reduced together.
template <typename acc_t, int K>
struct Acc {
  acc_t v[K];
};

// The total over the threads of each channel (equal channel lane) of a block, returned to
// every thread; merge(a, b) folds b into a. Fixed order: a tree over the lanes of a warp
// (shuffles down to the lowest lanes), then the warps in order. Every thread of the block
// must call it.
template <typename acc_t, int K, typename Merge>
FUSEDGAN_DEVICE Acc<acc_t, K> block_reduce(Acc<acc_t, K> value, int c_shift, Merge merge) {
  FUSEDGAN_SHARED(partial, Acc<acc_t, K>[kWarps][32]);
  FUSEDGAN_SHARED(total, Acc<acc_t, K>[32]);
  const int lanes_c = 1 << c_shift, warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  for (int delta = 16; delta >= lanes_c; delta /= 2) {
    Acc<acc_t, K> other;
    FUSEDGAN_UNROLL
    for (int k = 0; k < K; ++k) other.v[k] = __shfl_down_sync(0xffffffffu, value.v[k], delta);
    merge(value, other);
  }
  if (lane < lanes_c) partial[warp][lane] = value;
  __syncthreads();
  if (int(threadIdx.x) < lanes_c) {
    Acc<acc_t, K> sum = partial[0][threadIdx.x];
    for (int w = 1; w < kWarps; ++w) merge(sum, partial[w][threadIdx.x]);
    total[threadIdx.x] = sum;
  }
  __syncthreads();
  value = total[lane & (lanes_c - 1)];
  __syncthreads();  // before a next call overwrites partial and total
  return value;
}

// block_reduce's merges: plain sums, and (count, mean, M2) merged with Chan's formula.
struct SumMerge {
  template <typename acc_t, int K>
  FUSEDGAN_DEVICE void operator()(Acc<acc_t, K>& a, const Acc<acc_t, K>& b) const {
    FUSEDGAN_UNROLL
    for (int k = 0; k < K; ++k) a.v[k] += b.v[k];
  }
};
struct WelfordMerge {
  template <typename acc_t>
  FUSEDGAN_DEVICE void operator()(Acc<acc_t, 3>& a, const Acc<acc_t, 3>& b) const {
    welford_merge(a.v[0], a.v[1], a.v[2], b.v[0], b.v[1], b.v[2]);
  }
};

// One thread's (count, mean, M2) over its rows of channel c, from cur in steps of `step` up
// to row `end`: kItems rows loaded at a time (loads in flight together), their exact
// two-pass statistics merged into the thread's (Chan). ONE_PASS: one load of kItems rows,
// left in v for the caller's output pass (0 past the end and for an inactive thread).
//
// The statistics are of x - shift, where shift is one value of the channel (BatchNorm) or
// of the (sample, group) (GroupNorm), the same for every thread and split: the means that
// the merges subtract from each other (here, block_reduce, the merge kernels) then carry
// rounding errors at the scale of the spread, not of the mean. Unshifted, x = 1e4 + N(0, 1)
// gave batch variances off by up to 3.5e-4 (fp32, emulated build); the caller adds shift
// back to the merged mean.
template <bool ONE_PASS, typename scalar_t, typename acc_t, typename index_t>
FUSEDGAN_DEVICE Acc<acc_t, 3> thread_stats(dptr<const scalar_t> x, const Strides<index_t>& xs, index_t c, bool active,
                                           const Rows<index_t>& rows, Cursor<index_t> cur,
                                           const Cursor<index_t>& step, index_t end, acc_t shift, acc_t (&v)[kItems]) {
  Acc<acc_t, 3> stats{{0, 0, 0}};
  do {
    int count = 0;
    acc_t sum = 0;
    FUSEDGAN_UNROLL
    for (int k = 0; k < kItems; ++k) {
      v[k] = 0;
      if (active && cur.r < end) {
        v[k] = static_cast<acc_t>(x[cur.offset(xs) + c * xs.c]);
        sum += v[k] - shift;
        ++count;
      }
      rows.advance(cur, step);
    }
    if (count > 0) {
      const acc_t mean = sum / acc_t(count);
      acc_t m2 = 0;
      FUSEDGAN_UNROLL
      for (int k = 0; k < kItems; ++k) m2 += k < count ? (v[k] - shift - mean) * (v[k] - shift - mean) : acc_t(0);
      WelfordMerge{}(stats, Acc<acc_t, 3>{{acc_t(count), mean, m2}});
    }
  } while (!ONE_PASS && active && cur.r < end);
  return stats;
}

// 1 / sqrt(var + eps) and weight times it: one formula for every kernel, so forward and
// backward compute the same pre-activation z (and the same activation mask) bit for bit.
template <typename acc_t>
struct Coefficients {
  acc_t mean, invstd, scale, bias;
};
template <typename acc_t>
FUSEDGAN_DEVICE Coefficients<acc_t> coefficients(acc_t mean, acc_t var, acc_t weight, acc_t bias, acc_t eps) {
  const acc_t invstd = acc_t(1) / sqrt(var + eps);
  return {mean, invstd, weight * invstd, bias};
}

// out[k, c] = the sum over splits i of part[k, i, c], added in split order; grid
// (channel blocks, K), part a (K, n_splits, C) tensor.
template <typename acc_t>
__global__ void sum_splits_kernel(dptr<const acc_t> part, dptr<acc_t> out, int64_t C, int64_t n_splits) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, k = blockIdx.y;
  if (c >= C) return;
  acc_t total = 0;
  for (int64_t i = 0; i < n_splits; ++i) total += part[(k * n_splits + i) * C + c];
  out[k * C + c] = total;
}

}  // namespace
}  // namespace fusedgan
