// GroupNorm / InstanceNorm + activation: the CUDA kernels (device code of both builds; the
// launchers are in group_norm_act_launch.h). Reading: device.cuh's Rows and Cursor, and
// batch_norm_act_kernels.cuh, whose walks these kernels share.
//
// Statistics are per (sample, group), over the Cg = C / G channels of the group and the S
// positions of the sample. Both passes walk x as BatchNorm's do, as R = N * S rows by C
// channels, so a warp's loads are adjacent in every layout (rows in NCHW, channels in
// channels_last and (N, C)):
//  - one-pass (a block holds a sample's S rows of whole groups: S <= its row lanes * kItems,
//    Cg a power of two within its channel lanes; InstanceNorm on small images): the
//    reduction kernels keep each thread's rows in registers, merge each group's channels
//    inside the block (group_reduce) and write y or dx themselves.
//  - tiled, otherwise: the reductions (gn_channel_stats_kernel, gn_grad_sums_kernel) take
//    per-(sample, channel) partial results: a block owns one sample's channel block and one
//    split of that sample's S rows (grid x = sample * channel blocks + channel block, grid
//    y = split), so a split never crosses samples. Partial results go to a (K, n_splits,
//    N * C) workspace. Small merge kernels combine them, one thread per (sample, group) (or
//    per channel), in a fixed order: channel by channel, each channel's splits in split
//    order. Elementwise kernels (gn_apply_kernel, gn_grad_input_kernel) then move packs like
//    BatchNorm's; a thread's channels are fixed, and each access looks up its sample's group
//    values (a few (N, G) floats, which stay in L1).
// No atomics anywhere: results are bitwise repeatable.
// Bytes, in x-sized passes: one-pass 2 forward (read x, write y), 3 backward (read x and dy,
// write dx); tiled 3 forward (x read twice) and 5 backward (x and dy read twice). The
// workspaces hold K values per (sample, channel, split): small next to x unless S is tiny
// ((N, C) inputs: 3 accumulators per element of x).
#pragma once

#include "device.cuh"

namespace fusedgan {
namespace {

// The block of a per-sample reduction: sample n, the thread's channel c, and the block's rows
// [begin, end) of sample n (rows are n * S + s). c_blocks: channel blocks per sample.
template <typename index_t>
struct SampleSplit {
  index_t n, c, begin, end;
};
template <typename index_t>
FUSEDGAN_DEVICE SampleSplit<index_t> sample_split(const Rows<index_t>& rows, unsigned c_blocks) {
  const unsigned n = unsigned(blockIdx.x) / c_blocks, cb = unsigned(blockIdx.x) - n * c_blocks;  // 32-bit, once
  const index_t begin = index_t(n) * rows.S + index_t(blockIdx.y) * rows.rows_per_split;
  return {index_t(n), (index_t(cb) << rows.c_shift) + rows.lane_c(), begin,
          min_of(index_t(n) * rows.S + rows.S, begin + rows.rows_per_split)};
}

// The group of channel c: c / Cg, in 32 bits (C < 2^31), once per thread.
template <typename index_t>
FUSEDGAN_DEVICE index_t group_of(index_t c, int Cg) {
  return index_t(unsigned(c) / unsigned(Cg));
}

// An elementwise thread's CH_VEC channels: the first, c0 (rows.channel), and their weights,
// biases and groups, read only when c0 < C (a thread past the last channel has nothing to do).
template <typename acc_t, typename index_t, int CH_VEC>
struct ThreadChannels {
  index_t c0;
  acc_t w[CH_VEC], b[CH_VEC];
  index_t g[CH_VEC];
};
template <int CH_VEC, typename acc_t, typename index_t>
FUSEDGAN_DEVICE ThreadChannels<acc_t, index_t, CH_VEC> thread_channels(const Rows<index_t>& rows, dptr<const acc_t> w,
                                                                       dptr<const acc_t> b, int Cg) {
  ThreadChannels<acc_t, index_t, CH_VEC> ch;
  ch.c0 = rows.channel(CH_VEC);
  if (ch.c0 < rows.C) {
    FUSEDGAN_UNROLL
    for (int j = 0; j < CH_VEC; ++j)
      ch.w[j] = w[ch.c0 + j], ch.b[j] = b[ch.c0 + j], ch.g[j] = group_of(ch.c0 + j, Cg);
  }
  return ch;
}

// The total of this thread's group, from its channels' block totals (block_reduce's result,
// which every thread of a channel holds): the group's Cg channel lanes (Cg a power of two
// dividing the block's channel lanes, so they are adjacent lanes of every warp) merged in
// channel order, returned to every thread of the group. Every thread must call it.
template <typename acc_t, int K, typename Merge>
FUSEDGAN_DEVICE Acc<acc_t, K> group_reduce(const Acc<acc_t, K>& channel_total, int Cg, Merge merge) {
  const int first = (int(threadIdx.x) % 32) & ~(Cg - 1);
  Acc<acc_t, K> total;
  FUSEDGAN_UNROLL
  for (int k = 0; k < K; ++k) total.v[k] = __shfl_sync(0xffffffffu, channel_total.v[k], first);
  for (int j = 1; j < Cg; ++j) {
    Acc<acc_t, K> other;
    FUSEDGAN_UNROLL
    for (int k = 0; k < K; ++k) other.v[k] = __shfl_sync(0xffffffffu, channel_total.v[k], first + j);
    merge(total, other);
  }
  return total;
}

// Statistics of x over one (sample, channel) and split. A thread loads kItems rows at a time
// and merges their exact two-pass statistics into its own (as bn_stats_kernel); the block
// merges its threads. Tiled: the (count, mean, M2) go to part, a (3, n_splits, N * C)
// tensor. ONE_PASS (the block holds the sample's S rows and whole groups; a thread's rows
// stay in registers): the block merges each group's channels (group_reduce), writes mean and
// biased var per (sample, group), and y: 2 x-sized passes instead of 3.
template <typename scalar_t, typename acc_t, typename index_t, bool ONE_PASS>
__global__ void gn_channel_stats_kernel(dptr<const scalar_t> x, dptr<scalar_t> y, dptr<const acc_t> w,
                                        dptr<const acc_t> b, dptr<acc_t> mean_out, dptr<acc_t> var_out,
                                        dptr<acc_t> part, Rows<index_t> rows, Strides<index_t> xs,
                                        Strides<index_t> ys, unsigned c_blocks, int64_t N, index_t G, int Cg,
                                        acc_t eps, int act, acc_t slope) {
  const SampleSplit<index_t> blk = sample_split(rows, c_blocks);
  const bool active = blk.c < rows.C;
  const Cursor<index_t> first = rows.at(blk.begin + rows.lane_r()), step = rows.at(rows.row_lanes());
  // The (sample, group)'s first value (its first channel, row 0): thread_stats' shift for
  // every channel and split of the group, so that they merge.
  const acc_t shift =
      active ? static_cast<acc_t>(x[blk.n * xs.n + group_of(blk.c, Cg) * index_t(Cg) * xs.c]) : acc_t(0);
  acc_t v[kItems];
  Acc<acc_t, 3> stats = thread_stats<ONE_PASS>(x, xs, blk.c, active, rows, first, step, blk.end, shift, v);
  stats = block_reduce(stats, rows.c_shift, WelfordMerge{});
  if (!ONE_PASS) {
    if (!active || rows.lane_r() != 0) return;
    const int64_t plane = int64_t(gridDim.y) * N * rows.C;
    const int64_t at = (int64_t(blockIdx.y) * N + int64_t(blk.n)) * rows.C + blk.c;
    FUSEDGAN_UNROLL
    for (int k = 0; k < 3; ++k) part[k * plane + at] = stats.v[k];
    return;
  }
  stats = group_reduce(stats, Cg, WelfordMerge{});
  if (!active) return;
  const acc_t mean = stats.v[1] + shift, var = stats.v[2] / stats.v[0];
  if (rows.lane_r() == 0 && (rows.lane_c() & (Cg - 1)) == 0) {  // the group's first channel
    const index_t i = blk.n * G + group_of(blk.c, Cg);
    mean_out[i] = mean, var_out[i] = var;
  }
  const Coefficients<acc_t> k = coefficients(mean, var, w[blk.c], b[blk.c], eps);
  Cursor<index_t> cur = first;
  FUSEDGAN_UNROLL
  for (int u = 0; u < kItems; ++u) {
    if (cur.r < blk.end)
      y[cur.offset(ys) + blk.c * ys.c] =
          static_cast<scalar_t>(activation(pre_activation(v[u], k.mean, k.scale, k.bias), slope, act));
    rows.advance(cur, step);
  }
}

// One thread per (sample, group) i: merges the group's channels in channel order, each
// channel's splits in split order, into mean and biased var; rstd = 1 / sqrt(var + eps) as
// coefficients() computes it (the elementwise kernels' z is the same bit for bit in
// forward and backward). The group's (sample, channel) entries are i * Cg + j; their means
// are deviations from the group's first value (gn_channel_stats_kernel), read from x.
template <typename scalar_t, typename acc_t>
__global__ void gn_stats_merge_kernel(dptr<const acc_t> part, dptr<const scalar_t> x, Strides<int64_t> xs,
                                      dptr<acc_t> mean_out, dptr<acc_t> var_out, dptr<acc_t> rstd_out,
                                      FastDivider<int64_t> by_G, int64_t NG, int64_t Cg, int64_t n_splits, acc_t eps) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= NG) return;
  const int64_t n = by_G.div(i), g = i - n * by_G.divisor;
  const int64_t plane = n_splits * NG * Cg;
  Acc<acc_t, 3> stats{{0, 0, 0}};
  for (int64_t j = i * Cg; j < (i + 1) * Cg; ++j)
    for (int64_t k = 0; k < n_splits; ++k) {
      const int64_t at = k * NG * Cg + j;
      WelfordMerge{}(stats, Acc<acc_t, 3>{{part[at], part[plane + at], part[2 * plane + at]}});
    }
  const acc_t mean = stats.v[1] + static_cast<acc_t>(x[n * xs.n + g * Cg * xs.c]), var = stats.v[2] / stats.v[0];
  mean_out[i] = mean, var_out[i] = var;
  rstd_out[i] = coefficients(mean, var, acc_t(1), acc_t(0), eps).invstd;
}

// y = act(z) for the rows of one (channel block, split), from each (sample, group)'s mean
// and rstd. G groups of Cg channels.
template <typename scalar_t, typename acc_t, typename index_t, int VEC, bool PACK_ROWS>
__global__ void gn_apply_kernel(dptr<const scalar_t> x, dptr<scalar_t> y, dptr<const acc_t> mean,
                                dptr<const acc_t> rstd, dptr<const acc_t> w, dptr<const acc_t> b, Rows<index_t> rows,
                                Strides<index_t> xs, Strides<index_t> ys, index_t G, int Cg, int act, acc_t slope) {
  constexpr int CH_VEC = PACK_ROWS ? 1 : VEC;
  using P = Pack<scalar_t, VEC>;
  const ThreadChannels<acc_t, index_t, CH_VEC> ch = thread_channels<CH_VEC>(rows, w, b, Cg);
  if (ch.c0 >= rows.C) return;
  struct Access {
    P in;
    index_t out, nG;
  };
  walk_rows<PACK_ROWS ? VEC : 1>(
      rows,
      [&](const Cursor<index_t>& cur) {
        return Access{load_as<P>(x + (cur.offset(xs) + ch.c0 * xs.c)), cur.offset(ys) + ch.c0 * ys.c, cur.n * G};
      },
      [&](const Access& a) {
        acc_t m[CH_VEC], scale[CH_VEC];  // the access's (sample, group) values, per channel
        FUSEDGAN_UNROLL
        for (int j = 0; j < CH_VEC; ++j) m[j] = mean[a.nG + ch.g[j]], scale[j] = ch.w[j] * rstd[a.nG + ch.g[j]];
        store_pack<P, PACK_ROWS>(y + a.out, [&](int j, int q) {
          return activation(pre_activation(static_cast<acc_t>(a.in.v[j]), m[q], scale[q], ch.b[q]), slope, act);
        });
      });
}

// Sums of dz * xhat and dz over one (sample, channel) and split, written to sums, a
// (2, n_splits, N * C) tensor. ONE_PASS (as in gn_channel_stats_kernel; a thread keeps its
// rows' dz and xhat in registers): the block also merges each group's weight * sums
// (group_reduce, channels in the order gn_grad_merge_kernel adds them) and writes dx: 3
// x-sized passes instead of 5.
template <typename scalar_t, typename acc_t, typename index_t, bool ONE_PASS>
__global__ void gn_grad_sums_kernel(dptr<const scalar_t> dy, dptr<const scalar_t> x, dptr<scalar_t> dx,
                                    dptr<const acc_t> mean, dptr<const acc_t> var, dptr<const acc_t> w,
                                    dptr<const acc_t> b, dptr<acc_t> sums, Rows<index_t> rows, Strides<index_t> dys,
                                    Strides<index_t> xs, Strides<index_t> dxs, unsigned c_blocks, int64_t N,
                                    index_t G, int Cg, acc_t count, acc_t eps, int act, acc_t slope) {
  const SampleSplit<index_t> blk = sample_split(rows, c_blocks);
  const bool active = blk.c < rows.C;
  const index_t i = blk.n * G + (active ? group_of(blk.c, Cg) : index_t(0));
  const Coefficients<acc_t> k =
      active ? coefficients(mean[i], var[i], w[blk.c], b[blk.c], eps) : Coefficients<acc_t>{};
  const Cursor<index_t> first = rows.at(blk.begin + rows.lane_r()), step = rows.at(rows.row_lanes());
  Cursor<index_t> cur = first;
  Acc<acc_t, 2> s{{0, 0}};  // (sum of dz * xhat, sum of dz)
  acc_t dz[kItems], xhat[kItems];
  do {
    FUSEDGAN_UNROLL
    for (int u = 0; u < kItems; ++u) {
      dz[u] = 0, xhat[u] = 0;
      if (active && cur.r < blk.end) {
        const acc_t xv = static_cast<acc_t>(x[cur.offset(xs) + blk.c * xs.c]);
        dz[u] = pre_activation_grad(static_cast<acc_t>(dy[cur.offset(dys) + blk.c * dys.c]), xv, k.mean, k.scale,
                                    k.bias, slope, act);
        xhat[u] = (xv - k.mean) * k.invstd;
        s.v[0] += dz[u] * xhat[u];
        s.v[1] += dz[u];
      }
      rows.advance(cur, step);
    }
  } while (!ONE_PASS && active && cur.r < blk.end);
  s = block_reduce(s, rows.c_shift, SumMerge{});
  if (active && rows.lane_r() == 0) {
    const int64_t plane = int64_t(gridDim.y) * N * rows.C;
    const int64_t at = (int64_t(blockIdx.y) * N + int64_t(blk.n)) * rows.C + blk.c;
    sums[at] = s.v[0];
    sums[plane + at] = s.v[1];
  }
  if (!ONE_PASS) return;
  const acc_t wc = active ? w[blk.c] : acc_t(0);
  const Acc<acc_t, 2> group = group_reduce(Acc<acc_t, 2>{{wc * s.v[0], wc * s.v[1]}}, Cg, SumMerge{});
  if (!active) return;
  const acc_t mean_wdz_xhat = group.v[0] / count, mean_wdz = group.v[1] / count;
  cur = first;
  FUSEDGAN_UNROLL
  for (int u = 0; u < kItems; ++u) {
    if (cur.r < blk.end)
      dx[cur.offset(dxs) + blk.c * dxs.c] =
          static_cast<scalar_t>(group_grad_input(dz[u], xhat[u], wc, k.invstd, mean_wdz, mean_wdz_xhat));
    rows.advance(cur, step);
  }
}

// One thread per (sample, group) i = n * G + g, from the per-(sample, channel) totals
// (sum dz * xhat, sum dz), a (2, N * C) tensor: rstd and the group means of weight * dz and
// weight * dz * xhat, into group, a (3, N * G) tensor. Channels added in order.
template <typename acc_t>
__global__ void gn_grad_merge_kernel(dptr<const acc_t> totals, dptr<const acc_t> var, dptr<const acc_t> w,
                                     dptr<acc_t> group, int64_t NG, int64_t Cg, FastDivider<int64_t> by_G,
                                     acc_t count, acc_t eps) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= NG) return;
  const int64_t g = i - by_G.div(i) * by_G.divisor, NC = NG * Cg;
  acc_t wdz = 0, wdz_xhat = 0;
  for (int64_t j = 0; j < Cg; ++j) {
    const acc_t wc = w[g * Cg + j];
    wdz_xhat += wc * totals[i * Cg + j];
    wdz += wc * totals[NC + i * Cg + j];
  }
  group[i] = coefficients(acc_t(0), var[i], acc_t(1), acc_t(0), eps).invstd;
  group[NG + i] = wdz / count;
  group[2 * NG + i] = wdz_xhat / count;
}

// dx for the rows of one (channel block, split): rstd * (w dz - mean_wdz - xhat * mean_wdz_xhat),
// the (sample, group) values from group = (rstd, mean_wdz, mean_wdz_xhat), each (N * G).
template <typename scalar_t, typename acc_t, typename index_t, int VEC, bool PACK_ROWS>
__global__ void gn_grad_input_kernel(dptr<const scalar_t> dy, dptr<const scalar_t> x, dptr<scalar_t> dx,
                                     dptr<const acc_t> mean, dptr<const acc_t> group, dptr<const acc_t> w,
                                     dptr<const acc_t> b, Rows<index_t> rows, Strides<index_t> dys,
                                     Strides<index_t> xs, Strides<index_t> dxs, index_t G, index_t NG, int Cg,
                                     int act, acc_t slope) {
  constexpr int CH_VEC = PACK_ROWS ? 1 : VEC;
  using P = Pack<scalar_t, VEC>;
  const ThreadChannels<acc_t, index_t, CH_VEC> ch = thread_channels<CH_VEC>(rows, w, b, Cg);
  if (ch.c0 >= rows.C) return;
  struct Access {
    P x, dy;
    index_t out, nG;
  };
  walk_rows<PACK_ROWS ? VEC : 1>(
      rows,
      [&](const Cursor<index_t>& cur) {
        return Access{load_as<P>(x + (cur.offset(xs) + ch.c0 * xs.c)),
                      load_as<P>(dy + (cur.offset(dys) + ch.c0 * dys.c)), cur.offset(dxs) + ch.c0 * dxs.c, cur.n * G};
      },
      [&](const Access& a) {
        acc_t m[CH_VEC], r[CH_VEC], k1[CH_VEC], k2[CH_VEC];  // the access's (sample, group) values
        FUSEDGAN_UNROLL
        for (int j = 0; j < CH_VEC; ++j) {
          const index_t i = a.nG + ch.g[j];
          m[j] = mean[i], r[j] = group[i], k1[j] = group[NG + i], k2[j] = group[2 * NG + i];
        }
        store_pack<P, PACK_ROWS>(dx + a.out, [&](int j, int q) {
          const acc_t xv = static_cast<acc_t>(a.x.v[j]);
          const acc_t d =
              pre_activation_grad(static_cast<acc_t>(a.dy.v[j]), xv, m[q], ch.w[q] * r[q], ch.b[q], slope, act);
          return group_grad_input(d, (xv - m[q]) * r[q], ch.w[q], r[q], k1[q], k2[q]);
        });
      });
}

}  // namespace
}  // namespace fusedgan
