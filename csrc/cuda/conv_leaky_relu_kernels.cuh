// Conv2d + bias + LeakyReLU: the CUDA kernels after the convolution (device code of both
// builds; the launchers are in conv_leaky_relu_launch.h). The grids and the walk over rows
// are those of the BatchNorm kernels (batch_norm_act_kernels.cuh).
#pragma once

#include "device.cuh"

namespace fusedgan {
namespace {

// y = leaky_relu(y + bias) in place (bias may be null: no bias).
template <typename scalar_t, typename acc_t, typename index_t, int VEC, bool PACK_ROWS>
__global__ void bias_leaky_relu_kernel(dptr<scalar_t> y, dptr<const acc_t> bias, Rows<index_t> rows,
                                       Strides<index_t> ys, acc_t slope) {
  constexpr int CH_VEC = PACK_ROWS ? 1 : VEC;
  using P = Pack<scalar_t, VEC>;
  const index_t c0 = rows.channel(CH_VEC);
  if (c0 >= rows.C) return;
  acc_t b[CH_VEC];
  FUSEDGAN_UNROLL
  for (int j = 0; j < CH_VEC; ++j) b[j] = bias == nullptr ? acc_t(0) : bias[c0 + j];
  struct Access {
    P in;
    index_t at;
  };
  walk_rows<PACK_ROWS ? VEC : 1>(
      rows,
      [&](const Cursor<index_t>& cur) {
        const index_t at = cur.offset(ys) + c0 * ys.c;
        return Access{load_as<P>(y + at), at};
      },
      [&](const Access& a) {
        store_pack<P, PACK_ROWS>(y + a.at, [&](int j, int q) {
          return activation(static_cast<acc_t>(a.in.v[j]) + b[q], slope, int(kLeakyRelu));
        });
      });
}

// dz = dy * (y > 0 ? 1 : slope) for one (channel block, split), and, when part is not null,
// the split's sum of dz per channel into part, a (n_splits, C) tensor.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void leaky_relu_grad_bias_kernel(dptr<const scalar_t> dy, dptr<const scalar_t> y, dptr<scalar_t> dz,
                                            dptr<acc_t> part, Rows<index_t> rows, Strides<index_t> dys,
                                            Strides<index_t> ys, Strides<index_t> dzs, acc_t slope) {
  const index_t c = rows.channel(1), r_end = rows.split_end();
  const bool active = c < rows.C;
  const Cursor<index_t> step = rows.at(rows.row_lanes());
  Cursor<index_t> cur = rows.at(rows.split_begin() + rows.lane_r());
  Acc<acc_t, 1> sum{{0}};
  while (active && cur.r < r_end) {
    FUSEDGAN_UNROLL
    for (int i = 0; i < kItems; ++i) {
      if (cur.r < r_end) {
        const acc_t d = activation_grad(static_cast<acc_t>(dy[cur.offset(dys) + c * dys.c]),
                                        static_cast<acc_t>(y[cur.offset(ys) + c * ys.c]), slope, int(kLeakyRelu));
        dz[cur.offset(dzs) + c * dzs.c] = static_cast<scalar_t>(d);
        sum.v[0] += d;
      }
      rows.advance(cur, step);
    }
  }
  if (part == nullptr) return;
  sum = block_reduce(sum, rows.c_shift, SumMerge{});
  if (active && rows.lane_r() == 0) part[int64_t(blockIdx.y) * rows.C + c] = sum.v[0];
}

}  // namespace
}  // namespace fusedgan
