// Host side of the CUDA kernels, for both builds: how a tensor is read (View), the launch
// plans (path, grid, vector width, index width), and the runtime the launches go to: the
// GPU's (runtime.cuh) or the emulated one (csrc/simt/runtime.h, FUSEDGAN_SIMT).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#ifdef FUSEDGAN_SIMT
#include "../simt/runtime.h"
#else
#include "runtime.cuh"
#endif
#include "device.cuh"

namespace fusedgan {
namespace {

using at::Tensor;

// (t, N, C, S, strides): t itself when its spatial dimensions walk with one stride (true
// for contiguous, channels_last and expanded tensors, and slices along N or C), else a
// contiguous copy.
struct View {
  Tensor t;
  int64_t N, C, S;
  Strides<int64_t> st;
  int64_t rows() const { return N * S; }
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

// Rows are x's unit-stride axis (NCHW, (N, C, L)): a block takes one channel, its threads
// adjacent rows. Otherwise (channels_last, (N, C), images of 1x1) channels are: a warp
// takes up to 32 adjacent channels of a row.
bool rows_fast(const View& x) { return x.S > 1 && x.st.s == 1; }

int ceil_log2(int64_t v) {
  int k = 0;
  while ((int64_t(1) << k) < v) ++k;
  return k;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Plan {
  bool one_pass = false;   // reductions: one split holds every row
  int c_shift = 0;         // 2^c_shift channel lanes per block
  int vec = 1;             // elements per access
  bool pack_rows = false;  // those elements lie along rows (else along channels)
  int64_t C = 0, R = 0, S = 1, c_blocks = 1, n_splits = 1, rows_per_split = 0;
  int64_t sample_c_blocks = 0;  // per-sample reductions: channel blocks per sample
  bool wide = false;  // offsets need int64

  // Grid x holds the channel blocks: at most 2^31 - 1 of them, and the kernels index
  // channels in 32 bits, so C must fit too (a wrapped grid would leave outputs unwritten).
  dim3 grid() const {
    TORCH_CHECK(c_blocks < (int64_t(1) << 31) && C < (int64_t(1) << 31), "fusedgan: ", C,
                " channels are more than one CUDA grid (2^31 - 1 blocks) and 32-bit channel indices hold");
    return dim3(unsigned(c_blocks), unsigned(n_splits));
  }

  template <typename index_t>
  Rows<index_t> rows() const {
    return {index_t(R), index_t(S), index_t(C), index_t(rows_per_split), FastDivider<index_t>(index_t(S)), c_shift};
  }
};

// int64 offsets unless every offset and row index a launch over `views` can form fits in
// int32. Margins: a split's end (split start + rows per split) is below 2R; a cursor steps
// at most kItems steps of at most kThreads * 16 rows past it; channel indices of a block's
// idle lanes reach below C + 32 lanes * 4 channels.
bool needs_int64(std::initializer_list<const View*> views) {
  if (force_int64()) return true;
  int64_t bound = 0;
  for (const View* v : views) {
    const int64_t offsets = v->N * v->st.n + v->S * v->st.s + (v->C + 128) * v->st.c;
    bound = std::max({bound, offsets, 2 * v->rows() + kItems * kThreads * 16});
  }
  return bound >= (int64_t(1) << 31);
}

// The row splits of a launch over p.c_blocks channel blocks: enough for `target_blocks`
// blocks, each split at least `min_rows` rows and a multiple of `align` rows, at most 65535
// of them (grid axis y).
void split_rows(Plan& p, int64_t target_blocks, int64_t min_rows, int64_t align) {
  int64_t splits = std::max<int64_t>(1, std::min(ceil_div(target_blocks, p.c_blocks), p.R / std::max<int64_t>(min_rows, 1)));
  splits = std::min<int64_t>(splits, 65535);
  p.rows_per_split = ceil_div(ceil_div(p.R, splits), align) * align;
  p.n_splits = ceil_div(p.R, p.rows_per_split);
}

// A reduction over x's rows (statistics, gradient sums): one-pass when a block's threads
// can hold every row of their channels, kItems each; else enough splits to fill the GPU
// four times over, each thread getting at least 4 rows. group_channels > 0 (GroupNorm's
// per-(sample, group) statistics, Cg channels a group): grid x is N times the channel blocks
// of a sample (p.sample_c_blocks) and each sample's S rows are split on their own;
// one-pass when a block holds a sample's S rows and whole groups (Cg a power of two, at
// most the block's channel lanes), so the block can merge a group's channels itself.
Plan plan_reduction(const View& x, int multiprocessors, std::initializer_list<const View*> views,
                    int64_t group_channels = 0) {
  Plan p;
  const bool per_sample = group_channels > 0;
  p.C = x.C, p.R = x.rows(), p.S = std::max<int64_t>(x.S, 1);
  p.c_shift = rows_fast(x) ? 0 : std::min(5, ceil_log2(x.C));
  // A sample's rows are few (small images) and along the unit-stride axis: up to 4 channels
  // a block, so that fewer threads idle; a warp still reads runs of 8 adjacent rows.
  if (per_sample && rows_fast(x)) p.c_shift = std::clamp(ceil_log2(kThreads) - ceil_log2(p.S), 0, 2);
  const int64_t row_lanes = kThreads >> p.c_shift;
  const bool whole_groups = (group_channels & (group_channels - 1)) == 0 && group_channels <= (int64_t(1) << p.c_shift);
  p.one_pass = per_sample ? whole_groups && p.S <= row_lanes * kItems : p.R <= row_lanes * kItems;
  p.c_blocks = ceil_div(p.C, int64_t(1) << p.c_shift);
  if (per_sample) {
    TORCH_CHECK(x.N * p.c_blocks < (int64_t(1) << 31), "fusedgan: too many samples for one grid");
    p.sample_c_blocks = p.c_blocks, p.c_blocks *= x.N, p.R = p.S;  // split one sample's rows
    if (p.one_pass)
      p.n_splits = 1, p.rows_per_split = p.S;
    else
      split_rows(p, 4 * int64_t(multiprocessors), 4 * row_lanes, row_lanes);
    p.R = x.rows();
  } else if (p.one_pass) {
    p.n_splits = 1, p.rows_per_split = p.R;
  } else {
    split_rows(p, 4 * int64_t(multiprocessors), 4 * row_lanes, row_lanes);
  }
  p.wide = needs_int64(views);
  return p;
}

// Elements per access along x's unit-stride axis, where every tensor allows whole aligned
// packs: along rows, 16 / sizeof(scalar_t) (16 bytes) when every (n, c) run is contiguous and
// the packs divide S; along channels, at most 4 (a thread keeps each channel's coefficients
// in registers) when every row's channels are contiguous and the packs divide C. Else 1.
template <typename scalar_t>
constexpr int kRowPack = 16 / sizeof(scalar_t);
template <typename scalar_t>
constexpr int kChannelPack = std::min<int>(4, 16 / sizeof(scalar_t));

template <typename scalar_t>
int vector_width(const View& x, std::initializer_list<const View*> views) {
  const bool along_rows = rows_fast(x);
  const int wide = along_rows ? kRowPack<scalar_t> : kChannelPack<scalar_t>;
  if ((along_rows ? x.S : x.C) % wide) return 1;
  for (const View* v : views) {
    const auto& st = v->st;
    const bool n_ok = v->N == 1 || st.n % wide == 0;
    const bool ok = along_rows ? st.s == 1 && n_ok && (v->C == 1 || st.c % wide == 0)
                               : st.c == 1 && n_ok && (v->S == 1 || st.s % wide == 0);
    if (!ok || reinterpret_cast<std::uintptr_t>(v->t.data_ptr()) % (wide * sizeof(scalar_t))) return 1;
  }
  return wide;
}

// An elementwise pass over x's rows: packs per vector_width; splits for about eight blocks
// per multiprocessor, each thread getting at least kUnroll accesses.
template <typename scalar_t>
Plan plan_elementwise(const View& x, int multiprocessors, std::initializer_list<const View*> views) {
  Plan p;
  p.C = x.C, p.R = x.rows(), p.S = std::max<int64_t>(x.S, 1);
  p.vec = vector_width<scalar_t>(x, views);
  p.pack_rows = rows_fast(x);
  const int64_t per_thread_c = p.pack_rows ? 1 : p.vec, row_vec = p.pack_rows ? p.vec : 1;
  p.c_shift = p.pack_rows ? 0 : std::min(5, ceil_log2(ceil_div(x.C, per_thread_c)));
  const int64_t step = (kThreads >> p.c_shift) * row_vec;
  p.c_blocks = ceil_div(p.C, (int64_t(1) << p.c_shift) * per_thread_c);
  split_rows(p, 8 * int64_t(multiprocessors), step * kUnroll, step);
  p.wide = needs_int64(views);
  return p;
}

// f(index_t{}) with int32_t or int64_t offsets.
template <typename F>
void with_index(const Plan& p, F&& f) {
  if (p.wide) f(int64_t{});
  else f(int32_t{});
}

// f(std::integral_constant<int, VEC>, std::bool_constant<PACK_ROWS>) for the plan's packs.
template <typename scalar_t, typename F>
void with_pack(const Plan& p, F&& f) {
  if (p.vec == 1) f(std::integral_constant<int, 1>{}, std::false_type{});
  else if (p.pack_rows) f(std::integral_constant<int, kRowPack<scalar_t>>{}, std::true_type{});
  else f(std::integral_constant<int, kChannelPack<scalar_t>>{}, std::false_type{});
}

// f(index_t{}, vec, pack_rows) for an elementwise plan: its offsets' width and its packs.
template <typename scalar_t, typename F>
void with_elementwise(const Plan& p, F&& f) {
  with_index(p, [&](auto index) {
    with_pack<scalar_t>(p, [&](auto vec, auto pack_rows) { f(index, vec, pack_rows); });
  });
}

// f(index_t{}, std::bool_constant<ONE_PASS>) for a reduction plan.
template <typename F>
void with_reduction(const Plan& p, F&& f) {
  with_index(p, [&](auto index) { p.one_pass ? f(index, std::true_type{}) : f(index, std::false_type{}); });
}

// A kernel's pointer to t's data, or a null one where t is undefined.
template <typename T>
auto optional_ptr(const Tensor& t) -> decltype(device_ptr<T>(t)) {
  return t.defined() ? device_ptr<T>(t) : decltype(device_ptr<T>(t))(nullptr);
}

template <typename index_t>
Strides<index_t> strides(const View& v) {
  return {index_t(v.st.n), index_t(v.st.s), index_t(v.st.c)};
}

}  // namespace
}  // namespace fusedgan
