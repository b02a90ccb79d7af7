// BatchNorm + activation: the CUDA kernels (device code of both builds; the launchers are in
// batch_norm_act_launch.h). Reading: device.cuh's Rows and Cursor.
//
// Reductions run on a (channel block, row split) grid. A thread loads kItems of its rows at a
// time (loads in flight together), takes their exact two-pass statistics (or sums) and
// merges them into its own; the block then merges its threads per channel (block_reduce) in
// a fixed order. One-pass: one split holds all R rows (R <= row lanes * kItems), each thread
// keeps its kItems values in registers and the block writes the output too (2N bytes
// forward, 3N backward). Tiled: each split writes partial results, a merge kernel combines
// them in split order, and an elementwise kernel writes y or dx. No atomics anywhere:
// results are bitwise repeatable.
//
// Elementwise kernels run on the same kind of grid; a thread moves VEC elements per access:
// 16-byte packs along rows when rows are the unit-stride axis (NCHW, VEC dividing H * W),
// packs of up to 4 channels when channels are (channels_last, VEC dividing C), one element
// otherwise (host.h, vector_width).
#pragma once

#include "device.cuh"

namespace fusedgan {
namespace {

// Batch statistics of one (channel block, split). ONE_PASS: also mean_out, var_out and y.
// Else the split's (count, mean, M2) go to part, a (3, n_splits, C) tensor, the mean as a
// deviation from the channel's first value (thread_stats).
template <typename scalar_t, typename acc_t, typename index_t, bool ONE_PASS>
__global__ void bn_stats_kernel(dptr<const scalar_t> x, dptr<scalar_t> y, dptr<const acc_t> w, dptr<const acc_t> b,
                                dptr<acc_t> mean_out, dptr<acc_t> var_out, dptr<acc_t> part, Rows<index_t> rows,
                                Strides<index_t> xs, Strides<index_t> ys, acc_t eps, int act, acc_t slope) {
  const index_t c = rows.channel(1), r_end = rows.split_end();
  const bool active = c < rows.C;
  const Cursor<index_t> first = rows.at(rows.split_begin() + rows.lane_r()), step = rows.at(rows.row_lanes());
  // The channel's first value (row 0): thread_stats' shift, in every split.
  const acc_t shift = active ? static_cast<acc_t>(x[c * xs.c]) : acc_t(0);
  acc_t v[kItems];
  Acc<acc_t, 3> stats = thread_stats<ONE_PASS>(x, xs, c, active, rows, first, step, r_end, shift, v);
  stats = block_reduce(stats, rows.c_shift, WelfordMerge{});
  if (!active) return;
  if (!ONE_PASS) {
    if (rows.lane_r() == 0) {
      const int64_t at = int64_t(blockIdx.y) * rows.C + c, plane = int64_t(gridDim.y) * rows.C;
      part[at] = stats.v[0];
      part[plane + at] = stats.v[1];
      part[2 * plane + at] = stats.v[2];
    }
    return;
  }
  const acc_t mean = stats.v[1] + shift, var = stats.v[2] / stats.v[0];
  if (rows.lane_r() == 0) mean_out[c] = mean, var_out[c] = var;
  const Coefficients<acc_t> k = coefficients(mean, var, w[c], b[c], eps);
  Cursor<index_t> cur = first;
  FUSEDGAN_UNROLL
  for (int i = 0; i < kItems; ++i) {
    if (cur.r < r_end)
      y[cur.offset(ys) + c * ys.c] =
          static_cast<scalar_t>(activation(pre_activation(v[i], k.mean, k.scale, k.bias), slope, act));
    rows.advance(cur, step);
  }
}

// Merges the splits' statistics in split order: mean and biased variance per channel. The
// means in part are deviations from the channel's first value, x[c * x_stride_c].
template <typename scalar_t, typename acc_t>
__global__ void bn_stats_merge_kernel(dptr<const acc_t> part, dptr<const scalar_t> x, int64_t x_stride_c,
                                      dptr<acc_t> mean_out, dptr<acc_t> var_out, int64_t C, int64_t n_splits) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  Acc<acc_t, 3> stats{{0, 0, 0}};
  for (int64_t i = 0; i < n_splits; ++i)
    WelfordMerge{}(stats, Acc<acc_t, 3>{{part[i * C + c], part[(n_splits + i) * C + c], part[(2 * n_splits + i) * C + c]}});
  mean_out[c] = stats.v[1] + static_cast<acc_t>(x[c * x_stride_c]);
  var_out[c] = stats.v[2] / stats.v[0];
}

// y = act(z) for the rows of one (channel block, split), from mean and var per channel.
template <typename scalar_t, typename acc_t, typename index_t, int VEC, bool PACK_ROWS>
__global__ void bn_apply_kernel(dptr<const scalar_t> x, dptr<scalar_t> y, dptr<const acc_t> mean, dptr<const acc_t> var,
                                dptr<const acc_t> w, dptr<const acc_t> b, Rows<index_t> rows, Strides<index_t> xs,
                                Strides<index_t> ys, acc_t eps, int act, acc_t slope) {
  constexpr int CH_VEC = PACK_ROWS ? 1 : VEC;
  using P = Pack<scalar_t, VEC>;
  const index_t c0 = rows.channel(CH_VEC);
  if (c0 >= rows.C) return;
  Coefficients<acc_t> k[CH_VEC];
  FUSEDGAN_UNROLL
  for (int j = 0; j < CH_VEC; ++j) k[j] = coefficients(mean[c0 + j], var[c0 + j], w[c0 + j], b[c0 + j], eps);
  struct Access {
    P in;
    index_t out;
  };
  walk_rows<PACK_ROWS ? VEC : 1>(
      rows,
      [&](const Cursor<index_t>& cur) {
        return Access{load_as<P>(x + (cur.offset(xs) + c0 * xs.c)), cur.offset(ys) + c0 * ys.c};
      },
      [&](const Access& a) {
        store_pack<P, PACK_ROWS>(y + a.out, [&](int j, int q) {
          const acc_t z = pre_activation(static_cast<acc_t>(a.in.v[j]), k[q].mean, k[q].scale, k[q].bias);
          return activation(z, slope, act);
        });
      });
}

// Sums of dz * xhat and dz (dweight, dbias) over one (channel block, split); ONE_PASS also
// writes dx. The sums go to sums, a (2, n_splits, C) tensor.
template <typename scalar_t, typename acc_t, typename index_t, bool ONE_PASS>
__global__ void bn_grad_sums_kernel(dptr<const scalar_t> dy, dptr<const scalar_t> x, dptr<scalar_t> dx,
                                    dptr<const acc_t> mean, dptr<const acc_t> var, dptr<const acc_t> w,
                                    dptr<const acc_t> b, dptr<acc_t> sums, Rows<index_t> rows, Strides<index_t> dys,
                                    Strides<index_t> xs, Strides<index_t> dxs, bool training, acc_t eps, int act,
                                    acc_t slope) {
  const index_t c = rows.channel(1), r_end = rows.split_end();
  const bool active = c < rows.C;
  const Cursor<index_t> first = rows.at(rows.split_begin() + rows.lane_r()), step = rows.at(rows.row_lanes());
  const Coefficients<acc_t> k = active ? coefficients(mean[c], var[c], w[c], b[c], eps) : Coefficients<acc_t>{};
  Cursor<index_t> cur = first;
  Acc<acc_t, 2> s{{0, 0}};  // (sum of dz * xhat, sum of dz)
  acc_t dz[ONE_PASS ? kItems : 1] = {}, xhat[ONE_PASS ? kItems : 1] = {};
  do {
    FUSEDGAN_UNROLL
    for (int i = 0; i < kItems; ++i) {
      if (active && cur.r < r_end) {
        const acc_t xv = static_cast<acc_t>(x[cur.offset(xs) + c * xs.c]);
        const acc_t d = pre_activation_grad(static_cast<acc_t>(dy[cur.offset(dys) + c * dys.c]), xv, k.mean,
                                            k.scale, k.bias, slope, act);
        const acc_t h = (xv - k.mean) * k.invstd;
        s.v[0] += d * h;
        s.v[1] += d;
        if (ONE_PASS) dz[i] = d, xhat[i] = h;
      }
      rows.advance(cur, step);
    }
  } while (!ONE_PASS && active && cur.r < r_end);
  s = block_reduce(s, rows.c_shift, SumMerge{});
  if (!active) return;
  if (rows.lane_r() == 0) {
    const int64_t at = int64_t(blockIdx.y) * rows.C + c;
    sums[at] = s.v[0];
    sums[int64_t(gridDim.y) * rows.C + at] = s.v[1];
  }
  if (!ONE_PASS) return;
  const acc_t mean_dz = s.v[1] / acc_t(rows.R), mean_dz_xhat = s.v[0] / acc_t(rows.R);
  cur = first;
  FUSEDGAN_UNROLL
  for (int i = 0; i < kItems; ++i) {
    if (cur.r < r_end)
      dx[cur.offset(dxs) + c * dxs.c] =
          static_cast<scalar_t>(grad_input(dz[i], xhat[i], k.scale, mean_dz, mean_dz_xhat, training));
    rows.advance(cur, step);
  }
}

// dx for the rows of one (channel block, split), from the totals sums = (sum dz * xhat, sum dz).
template <typename scalar_t, typename acc_t, typename index_t, int VEC, bool PACK_ROWS>
__global__ void bn_grad_input_kernel(dptr<const scalar_t> dy, dptr<const scalar_t> x, dptr<scalar_t> dx,
                                     dptr<const acc_t> mean, dptr<const acc_t> var, dptr<const acc_t> w,
                                     dptr<const acc_t> b, dptr<const acc_t> sums, Rows<index_t> rows,
                                     Strides<index_t> dys, Strides<index_t> xs, Strides<index_t> dxs, bool training,
                                     acc_t eps, int act, acc_t slope) {
  constexpr int CH_VEC = PACK_ROWS ? 1 : VEC;
  using P = Pack<scalar_t, VEC>;
  const index_t c0 = rows.channel(CH_VEC);
  if (c0 >= rows.C) return;
  Coefficients<acc_t> k[CH_VEC];
  acc_t mean_dz[CH_VEC], mean_dz_xhat[CH_VEC];
  FUSEDGAN_UNROLL
  for (int j = 0; j < CH_VEC; ++j) {
    k[j] = coefficients(mean[c0 + j], var[c0 + j], w[c0 + j], b[c0 + j], eps);
    mean_dz_xhat[j] = sums[c0 + j] / acc_t(rows.R);
    mean_dz[j] = sums[rows.C + c0 + j] / acc_t(rows.R);
  }
  struct Access {
    P x, dy;
    index_t out;
  };
  walk_rows<PACK_ROWS ? VEC : 1>(
      rows,
      [&](const Cursor<index_t>& cur) {
        return Access{load_as<P>(x + (cur.offset(xs) + c0 * xs.c)), load_as<P>(dy + (cur.offset(dys) + c0 * dys.c)),
                      cur.offset(dxs) + c0 * dxs.c};
      },
      [&](const Access& a) {
        store_pack<P, PACK_ROWS>(dx + a.out, [&](int j, int q) {
          const acc_t xv = static_cast<acc_t>(a.x.v[j]);
          const acc_t d =
              pre_activation_grad(static_cast<acc_t>(a.dy.v[j]), xv, k[q].mean, k[q].scale, k[q].bias, slope, act);
          return grad_input(d, (xv - k[q].mean) * k[q].invstd, k[q].scale, mean_dz[q], mean_dz_xhat[q], training);
        });
      });
}

}  // namespace
}  // namespace fusedgan
