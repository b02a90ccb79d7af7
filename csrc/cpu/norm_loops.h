// Loops the normalization + activation kernels of the CPU backend share: exact chunk
// statistics, lane sums for the backward's reductions, and the per-run (rows layout) and
// per-row (channels layout) loops over values with per-channel mean, scale and bias, and
// the streaming stores of large fp32 outputs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../kernel_math.h"
#include "helpers.h"
#include "layout.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace fusedgan {
namespace {

constexpr int64_t kChunk = 256;  // elements converted/summed at a time (on the stack)

// The backward's sums over many short runs: at::vec lanes accumulate across runs (no
// reduction per run, which would dominate when H*W is small) and are flushed into a double
// every kFlush elements, so each fp32 lane adds at most kFlush / lanes terms.
template <typename opmath_t>
struct LaneSum {
  using Vec = at::vec::Vectorized<opmath_t>;
  static constexpr int64_t kFlush = 1024;
  Vec acc = Vec(opmath_t(0));
  opmath_t tail = 0;
  double total = 0;
  int64_t pending = 0;

  void counted(int64_t len) {
    pending += len;
    if (pending >= kFlush) flush();
  }
  void flush() {
    total += static_cast<double>(at::vec::vec_reduce_all<opmath_t>([](Vec& a, Vec& b) { return a + b; }, acc)) +
             static_cast<double>(tail);
    acc = Vec(opmath_t(0));
    tail = 0;
    pending = 0;
  }
  double result() {
    flush();
    return total;
  }
};

// Exact two-pass statistics of the len <= kChunk values at p, as deviations from `shift` (a
// value of the channel or group, the same for all its chunks): the mean of x - shift, then
// the sum of squared deviations from the mean, read again from L1. Chunks merge into a
// channel's statistics with welford_merge, so x is read from memory once for the
// statistics. The shift keeps the chunk means, and so the merge's differences between them,
// at the scale of the spread: a chunk mean at the scale of a large channel mean (1e4 with a
// spread of 1) carries a rounding error of 1e-3 of the spread, which the merges turned into
// 1e-5 to 4e-5 of the variance. Each pass keeps four independent vector sums (combined in a
// fixed order): one sum would wait on the previous add's latency every 8 values, which made
// this loop latency-bound.
template <typename opmath_t>
void chunk_stats(const opmath_t* p, int64_t len, opmath_t shift, opmath_t& mean, opmath_t& m2) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t W = Vec::size();
  if (len < W) {  // a short run (small H * W): the vector sums' setup and reductions would cost more
    opmath_t sum = 0, sq = 0;
    for (int64_t i = 0; i < len; ++i) sum += p[i] - shift;
    mean = sum / opmath_t(len);
    for (int64_t i = 0; i < len; ++i) sq += (p[i] - shift - mean) * (p[i] - shift - mean);
    m2 = sq;
    return;
  }
  const auto add = [](Vec& a, Vec& b) { return a + b; };
  const Vec zero(opmath_t(0)), vshift(shift);
  const auto load = [&](int64_t k) { return Vec::loadu(p + k) - vshift; };
  Vec a0 = zero, a1 = zero, a2 = zero, a3 = zero;
  opmath_t tail = 0;
  int64_t i = 0;
  for (; i + 4 * W <= len; i += 4 * W) {
    a0 = a0 + load(i), a1 = a1 + load(i + W);
    a2 = a2 + load(i + 2 * W), a3 = a3 + load(i + 3 * W);
  }
  for (; i + W <= len; i += W) a0 = a0 + load(i);
  for (; i < len; ++i) tail += p[i] - shift;
  Vec total = (a0 + a1) + (a2 + a3);
  mean = (at::vec::vec_reduce_all<opmath_t>(add, total) + tail) / opmath_t(len);
  const Vec center(mean);
  a0 = a1 = a2 = a3 = zero;
  tail = 0;
  const auto square = [&](int64_t k, Vec acc) {
    const Vec d = load(k) - center;
    return at::vec::fmadd(d, d, acc);
  };
  for (i = 0; i + 4 * W <= len; i += 4 * W)
    a0 = square(i, a0), a1 = square(i + W, a1), a2 = square(i + 2 * W, a2), a3 = square(i + 3 * W, a3);
  for (; i + W <= len; i += W) a0 = square(i, a0);
  for (; i < len; ++i) tail += (p[i] - shift - mean) * (p[i] - shift - mean);
  total = (a0 + a1) + (a2 + a3);
  m2 = at::vec::vec_reduce_all<opmath_t>(add, total) + tail;
}

// Adds one run's dz and dz * (x - mean) to two lane sums, straight from registers (no
// buffer in between: stores to a buffer next to the loads stalled this loop). The sums run
// in local vectors, two per term, and go back to the LaneSums once per run: accumulating
// in the LaneSums themselves kept them in memory (the compiler cannot prove x and dy do
// not alias them), a store and reload on every step.
template <typename opmath_t, int act>
void add_grad_terms(const opmath_t* x, const opmath_t* dy, int64_t len, opmath_t mean, opmath_t scale,
                    opmath_t bias, opmath_t slope, LaneSum<opmath_t>& sum_dz, LaneSum<opmath_t>& sum_dzx) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t W = Vec::size();
  const Vec vmean(mean), vscale(scale), vbias(bias), zero(opmath_t(0)), vslope(slope);
  const auto add = [&](int64_t k, Vec& dz_acc, Vec& dzx_acc) {
    const Vec xv = Vec::loadu(x + k), dy_v = Vec::loadu(dy + k);
    Vec dz = dy_v;
    if constexpr (act != kIdentity) {
      const Vec z = at::vec::fmadd(xv - vmean, vscale, vbias);
      const Vec negative = act == kRelu ? zero : dy_v * vslope;
      dz = Vec::blendv(negative, dy_v, z > zero);  // torch's masks: dy where z > 0 (NaN: negative side)
    }
    dz_acc = dz_acc + dz;
    dzx_acc = at::vec::fmadd(dz, xv - vmean, dzx_acc);
  };
  Vec dz0 = sum_dz.acc, dzx0 = sum_dzx.acc, dz1 = zero, dzx1 = zero;
  int64_t i = 0;
  for (; i + 2 * W <= len; i += 2 * W) add(i, dz0, dzx0), add(i + W, dz1, dzx1);
  for (; i + W <= len; i += W) add(i, dz0, dzx0);
  sum_dz.acc = dz0 + dz1, sum_dzx.acc = dzx0 + dzx1;
  for (; i < len; ++i) {
    const opmath_t dz = pre_activation_grad<opmath_t>(dy[i], x[i], mean, scale, bias, slope, act);
    sum_dz.tail += dz;
    sum_dzx.tail += dz * (x[i] - mean);
  }
  sum_dz.counted(len);
  sum_dzx.counted(len);
}

// Adds the len values at p as deviations from center, x - center (POWER 1) or
// (x - center)^2 (POWER 2), to a lane sum: a channel's statistics over many runs too short
// for chunk_stats, in two passes (the sum of deviations from a value of the channel, then the
// squared deviations from the mean), with no reduction per run. fp16/bf16 values are
// widened in registers, 16 at a time (no buffer to convert into and read back: at 16
// values a run, that round trip cost as much as the sums).
template <int POWER, typename scalar_t, typename opmath_t>
void add_deviations(const scalar_t* p, int64_t len, opmath_t center, LaneSum<opmath_t>& sum) {
  using Vec = at::vec::Vectorized<opmath_t>;
  const Vec vcenter(center);
  Vec acc = sum.acc;  // in a register across the run, not through the LaneSum's memory
  const auto add = [&](const Vec& v) {
    const Vec d = v - vcenter;
    acc = POWER == 1 ? acc + d : at::vec::fmadd(d, d, acc);
  };
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    for (; i + Vec::size() <= len; i += Vec::size()) add(Vec::loadu(p + i));
  } else {
    using Narrow = at::vec::Vectorized<scalar_t>;  // 2 x Vec::size() values
    for (; i + Narrow::size() <= len; i += Narrow::size()) {
      const auto [low, high] = at::vec::convert_to_float<scalar_t>(Narrow::loadu(p + i));
      add(low), add(high);
    }
  }
  sum.acc = acc;
  opmath_t tail = 0;
  for (; i < len; ++i) {
    const opmath_t d = static_cast<opmath_t>(p[i]) - center;
    tail += POWER == 1 ? d : d * d;
  }
  sum.tail += tail;
  sum.counted(len);
}

// fp16/bf16 values are widened to fp32 and narrowed back 16 at a time with at::vec's
// conversions: the scalar fp16 conversions (F16C instructions, one value each) kept the
// compiler from vectorizing the loops around them, and an fp16 BatchNorm ran at 0.28x of
// stock's speed forward and 0.19x forward+backward (64x128x16x16, 2026-12-01). For each 16
// positions i of the inputs, out gets f(i, the inputs' fp32 vectors at i) for each half,
// narrowed; returns how many values were done (0 for fp32 and fp64, whose plain loops the
// compiler vectorizes), and the caller's scalar loop does the rest.
template <typename scalar_t, typename F, typename... In>
int64_t widened_loop(scalar_t* __restrict__ out, int64_t len, F&& f, const In* __restrict__... in) {
  if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
    return 0;
  } else {
    using Narrow = at::vec::Vectorized<scalar_t>;
    constexpr int64_t W = at::vec::Vectorized<float>::size();
    int64_t i = 0;
    for (; i + Narrow::size() <= len; i += Narrow::size()) {
      const auto halves = std::make_tuple(at::vec::convert_to_float<scalar_t>(Narrow::loadu(in + i))...);
      const auto low = std::apply([&](const auto&... h) { return f(i, std::get<0>(h)...); }, halves);
      const auto high = std::apply([&](const auto&... h) { return f(i + W, std::get<1>(h)...); }, halves);
      at::vec::convert_from_float<scalar_t>(low, high).store(out + i);
    }
    return i;
  }
}

// kernel_math.h's activation() on a vector, with the same selects: ReLU z < 0 ? 0 : z
// (NaN kept), LeakyReLU z > 0 ? z : z * slope.
template <int act, typename Vec>
Vec activation_vec(const Vec& z, const Vec& slope) {
  const Vec zero(0);
  if constexpr (act == kRelu) return Vec::blendv(z, zero, z < zero);
  else if constexpr (act == kLeakyRelu) return Vec::blendv(z * slope, z, z > zero);
  else return z;
}

// kernel_math.h's group_grad_input() on a vector: (weight * dz - mean_wdz - xhat *
// mean_wdz_xhat) * rstd, its two products fused with their subtractions.
template <typename Vec>
Vec group_grad_input_vec(const Vec& dz, const Vec& xhat, const Vec& weight, const Vec& rstd, const Vec& mean_wdz,
                         const Vec& mean_wdz_xhat) {
  return at::vec::fnmadd(xhat, mean_wdz_xhat, at::vec::fmsub(weight, dz, mean_wdz)) * rstd;
}

// kernel_math.h's activation_grad() on a vector: dy where z > 0 (always for identity), else
// 0 (ReLU) or dy * slope.
template <int act, typename Vec>
Vec activation_grad_vec(const Vec& dy, const Vec& z, const Vec& slope) {
  if constexpr (act == kIdentity) return dy;
  const Vec negative = act == kRelu ? Vec(0) : dy * slope;
  return Vec::blendv(negative, dy, z > Vec(0));
}

// kernel_math.h's pre_activation_grad() and grad_input() on a vector (BatchNorm): dz at the
// recomputed z = (x - mean) * scale + bias, then dx = (dz - mean_dz - xhat * mean_dz_xhat) *
// scale in training, dz * scale in eval; the scalar loop's operations in its order (z and
// the training difference each one fused multiply-add, as the compiler contracts them there).
template <int act, typename Vec>
Vec grad_input_vec(const Vec& x, const Vec& dy, const Vec& mean, const Vec& invstd, const Vec& scale, const Vec& bias,
                   const Vec& slope, const Vec& mean_dz, const Vec& mean_dz_xhat, bool training) {
  const Vec centered = x - mean;
  const Vec dz = activation_grad_vec<act>(dy, at::vec::fmadd(centered, scale, bias), slope);
  if (!training) return dz * scale;
  return at::vec::fnmadd(centered * invstd, mean_dz_xhat, dz - mean_dz) * scale;
}

// p's len values as opmath_t: p itself, or converted into buf (len <= kChunk).
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
const opmath_t* as_opmath(const scalar_t* p, int64_t len, opmath_t* buf) {
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    return p;
  } else {
    using Narrow = at::vec::Vectorized<scalar_t>;
    constexpr int64_t W = at::vec::Vectorized<opmath_t>::size();
    int64_t k = 0;
    for (; k + Narrow::size() <= len; k += Narrow::size()) {  // widened in registers, as widened_loop
      const auto [low, high] = at::vec::convert_to_float<scalar_t>(Narrow::loadu(p + k));
      low.store(buf + k), high.store(buf + k + W);
    }
    for (; k < len; ++k) buf[k] = static_cast<opmath_t>(p[k]);
    return buf;
  }
}

// Calls f(pointer, length) over the len values at p in chunks of at most kChunk opmath
// values (converted into a stack buffer when scalar_t is not opmath_t).
template <typename scalar_t, typename F>
void for_chunks(const scalar_t* p, int64_t len, F&& f) {
  at::opmath_type<scalar_t> buf[kChunk];
  for (int64_t s0 = 0; s0 < len; s0 += kChunk) {
    const int64_t n = std::min(kChunk, len - s0);
    f(as_opmath(p + s0, n, buf), n);
  }
}

// fp32 outputs of at least this size are written with streaming (non-temporal) stores:
// they skip reading each output line before writing it, a third of the write traffic, and
// an output this large does not stay cached beside its inputs anyway. Measured on the
// 2-core CPU (training steps, NCHW fp32): 13% faster at 16 MiB (64x64x32x32), 7% at 8 MiB,
// but 10-20% slower at 2-4 MiB, where outputs were still cached for the next op.
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// out[0, len) = buf[0, len): non-temporal stores where out is 32-byte aligned.
inline void stream_store(float* out, const float* buf, int64_t len) {
#if defined(__AVX__)
  int64_t i = 0;
  for (; i < len && (reinterpret_cast<std::uintptr_t>(out + i) & 31); ++i) out[i] = buf[i];
  for (; i + 8 <= len; i += 8) _mm256_stream_ps(out + i, _mm256_loadu_ps(buf + i));
  for (; i < len; ++i) out[i] = buf[i];
#else
  std::copy(buf, buf + len, out);
#endif
}

// Orders a thread's streaming stores before whatever reads the output after the op.
inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// Writes one run of len outputs at out: compute(dst, s0, n) writes outputs [s0, s0 + n) to
// dst. When streaming (fp32 only), they are computed in L1-sized chunks and streamed out.
template <typename scalar_t, typename F>
void write_run(scalar_t* out, int64_t len, bool stream, F&& compute) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream) {
      float buf[kChunk];
      for (int64_t s0 = 0; s0 < len; s0 += kChunk) {
        const int64_t n = std::min(kChunk, len - s0);
        compute(buf, s0, n);
        stream_store(out + s0, buf, n);
      }
      return;
    }
  }
  compute(out, 0, len);
}

// Rows [r0, r1) of the channels layout, as functions with __restrict__ arguments: with
// fp32 data, the output and the per-channel arrays share a type, and without the promise
// that they do not overlap the compiler reloads every array each step and stops vectorizing.
template <typename scalar_t, typename opmath_t, int act>
void grad_sums_rows(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, int64_t r0, int64_t r1,
                    int64_t C, const opmath_t* __restrict__ mean, const opmath_t* __restrict__ scale,
                    const opmath_t* __restrict__ bias, opmath_t slope, opmath_t* __restrict__ acc_dz,
                    opmath_t* __restrict__ acc_dzx) {
  if constexpr (!std::is_same_v<scalar_t, opmath_t>) {
    // fp16/bf16: each row widened first (as_opmath, 16 at a time), then the loop below on
    // fp32 rows, which the compiler vectorizes (widened_loop says why).
    std::vector<opmath_t> rows(2 * C);
    for (int64_t r = r0; r < r1; ++r)
      grad_sums_rows<opmath_t, opmath_t, act>(as_opmath(x + r * C, C, rows.data()),
                                              as_opmath(dy + r * C, C, rows.data() + C), 0, 1, C, mean, scale, bias,
                                              slope, acc_dz, acc_dzx);
    return;
  }
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const opmath_t xv = x[r * C + c];
      const opmath_t dz = pre_activation_grad<opmath_t>(dy[r * C + c], xv, mean[c], scale[c], bias[c], slope, act);
      acc_dz[c] += dz;
      acc_dzx[c] += dz * (xv - mean[c]);
    }
}

// y = act(z) over rows r0..r1 of C channels, per-channel mean, scale and bias. The vector
// form of z is pre_activation's (x - mean) * scale + bias as the compiler contracts it, one
// fused multiply-add: the backward's recomputation gets the same z, bit for bit.
template <typename scalar_t, typename opmath_t, int act>
void apply_rows(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t r0, int64_t r1, int64_t C,
                const opmath_t* __restrict__ mean, const opmath_t* __restrict__ scale,
                const opmath_t* __restrict__ bias, opmath_t slope) {
  for (int64_t r = r0; r < r1; ++r) {
    const auto f = [&](int64_t at, const auto& v) {
      using Vec = std::decay_t<decltype(v)>;
      const Vec z = at::vec::fmadd(v - Vec::loadu(mean + at), Vec::loadu(scale + at), Vec::loadu(bias + at));
      return activation_vec<act>(z, Vec(slope));
    };
    int64_t c = widened_loop(y + r * C, C, f, x + r * C);
    for (; c < C; ++c)
      y[r * C + c] =
          static_cast<scalar_t>(activation(pre_activation<opmath_t>(x[r * C + c], mean[c], scale[c], bias[c]), slope, act));
  }
}

template <typename scalar_t, typename opmath_t, int act>
void apply_run(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t len, opmath_t mean, opmath_t scale,
               opmath_t bias, opmath_t slope) {
  const auto f = [&](int64_t, const auto& v) {
    using Vec = std::decay_t<decltype(v)>;
    return activation_vec<act>(at::vec::fmadd(v - Vec(mean), Vec(scale), Vec(bias)), Vec(slope));
  };
  int64_t s = widened_loop(y, len, f, x);
  for (; s < len; ++s)
    y[s] = static_cast<scalar_t>(activation(pre_activation<opmath_t>(x[s], mean, scale, bias), slope, act));
}

// Per-channel mean and M2 (sum of squared deviations) of R rows of C channels (row r,
// channel c at x[r * C + c]): fixed row blocks (two passes each, in double), merged in block
// order with Chan's formula, so the result depends on neither threads nor scheduling. The
// blocks depend on R alone: at most kRowBlocks, of at least kMinBlockRows rows (a 4x4 map
// at batch 64 is 1024 rows: 16 blocks, not 64 of 16 rows, whose merges cost C * 64 Chan
// steps). Each pass adds four rows at a time into the block's per-channel sums (one load
// and store of a sum per four values, vectorized along channels), and the merge runs
// along channels with the block's coefficients hoisted (welford_merge's formula, in the
// same order of operations).
template <typename scalar_t>
void channel_stats_rows(const scalar_t* x, int64_t R, int64_t C, double* mean_out, double* m2_out) {
  const int64_t blocks = std::max<int64_t>(1, std::min(kRowBlocks, R / kMinBlockRows));
  std::vector<double> block_mean(blocks * C), block_m2(blocks * C);
  at::parallel_for(0, blocks, grain(R / blocks * C), [&, x](int64_t b0, int64_t b1) {
    using opmath_t = at::opmath_type<scalar_t>;
    std::vector<opmath_t> widened(std::is_same_v<scalar_t, opmath_t> ? 0 : 4 * C);  // fp16/bf16: 4 rows in fp32
    const opmath_t* rows[4];
    // Rows r..r+n-1 as opmath_t values: rows[i] is row r + i.
    const auto load_rows = [&](int64_t r, int64_t n) {
      for (int64_t i = 0; i < n; ++i) rows[i] = as_opmath(x + (r + i) * C, C, widened.data() + i * C);
    };
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * R / blocks, r1 = (blk + 1) * R / blocks;
      double* __restrict__ mean = &block_mean[blk * C];
      double* __restrict__ m2 = &block_m2[blk * C];
      const auto at = [&](int64_t i, int64_t c) { return static_cast<double>(rows[i][c]); };
      int64_t r = r0;
      for (; r + 4 <= r1; r += 4) {
        load_rows(r, 4);
        for (int64_t c = 0; c < C; ++c) mean[c] += (at(0, c) + at(1, c)) + (at(2, c) + at(3, c));
      }
      for (; r < r1; ++r) {
        load_rows(r, 1);
        for (int64_t c = 0; c < C; ++c) mean[c] += at(0, c);
      }
      for (int64_t c = 0; c < C; ++c) mean[c] /= double(r1 - r0);
      const auto square = [&](int64_t i, int64_t c) {
        const double d = at(i, c) - mean[c];
        return d * d;
      };
      for (r = r0; r + 4 <= r1; r += 4) {
        load_rows(r, 4);
        for (int64_t c = 0; c < C; ++c) m2[c] += (square(0, c) + square(1, c)) + (square(2, c) + square(3, c));
      }
      for (; r < r1; ++r) {
        load_rows(r, 1);
        for (int64_t c = 0; c < C; ++c) m2[c] += square(0, c);
      }
    }
  });
  std::fill(mean_out, mean_out + C, 0.0);
  std::fill(m2_out, m2_out + C, 0.0);
  double n = 0;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const double n_b = double((blk + 1) * R / blocks - blk * R / blocks), frac = n_b / (n + n_b);
    const double* __restrict__ mean_b = &block_mean[blk * C];
    const double* __restrict__ m2_b = &block_m2[blk * C];
    for (int64_t c = 0; c < C; ++c) {
      const double delta = mean_b[c] - mean_out[c];
      mean_out[c] += delta * frac;
      m2_out[c] += m2_b[c] + delta * delta * n * frac;
    }
    n += n_b;
  }
}

// Adds the per-channel sums of dz and dz * (x - mean) over R rows of C channels to sum_dz and
// sum_dzx: opmath partials over fixed row blocks, added in block order in double.
template <typename scalar_t, typename opmath_t, int act>
void channel_grad_sums_rows(const scalar_t* x, const scalar_t* dy, int64_t R, int64_t C, const opmath_t* mean,
                            const opmath_t* scale, const opmath_t* bias, opmath_t slope, double* sum_dz,
                            double* sum_dzx) {
  const int64_t blocks = std::min(kRowBlocks, R);
  std::vector<double> block_dz(blocks * C, 0.0), block_dzx(blocks * C, 0.0);
  at::parallel_for(0, blocks, grain(R / blocks * C), [&, x, dy, slope](int64_t b0, int64_t b1) {
    std::vector<opmath_t> acc_dz(C), acc_dzx(C);
    for (int64_t blk = b0; blk < b1; ++blk) {
      std::fill(acc_dz.begin(), acc_dz.end(), opmath_t(0));
      std::fill(acc_dzx.begin(), acc_dzx.end(), opmath_t(0));
      grad_sums_rows<scalar_t, opmath_t, act>(x, dy, blk * R / blocks, (blk + 1) * R / blocks, C, mean, scale, bias,
                                              slope, acc_dz.data(), acc_dzx.data());
      for (int64_t c = 0; c < C; ++c) block_dz[blk * C + c] = acc_dz[c], block_dzx[blk * C + c] = acc_dzx[c];
    }
  });
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t c = 0; c < C; ++c) sum_dz[c] += block_dz[blk * C + c], sum_dzx[c] += block_dzx[blk * C + c];
}

}  // namespace
}  // namespace fusedgan
