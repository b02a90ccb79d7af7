// BatchNorm + activation, C++ CPU kernels (registered for the CPU dispatch key).
//
// Two layouts are read in place:
//  - rows (contiguous NCHW): each (n, c) is a run of S contiguous values. Threads take
//    groups of adjacent channels and walk a group's runs in memory order (n outer), so the
//    loads stream whole pages; a channel's statistics merge (Chan) the exact two-pass
//    statistics of its chunks of at most kChunk values (runs of at most kLaneRun values:
//    two passes over the channel, its mean then its squared deviations), and its output
//    follows while the group's slice is in cache.
//  - channels (channels_last, and (N, C) inputs): each of the R = N*S rows holds C
//    contiguous channels. Rows are cut into a fixed number of blocks, each block reduces
//    into per-channel partials, and the partials are merged in block order.
// Any other layout is copied to contiguous first. Large fp32 outputs of the rows layout are
// written with streaming stores (kStreamBytes). A channel's sums never depend on how
// channels are grouped or on the number of threads, so results are bitwise repeatable.
// Statistics and sums are gathered in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../kernel_math.h"
#include "../op_checks.h"
#include "helpers.h"
#include "layout.h"
#include "norm_loops.h"

namespace fusedgan {
namespace {

using at::Tensor;

// Channels per group of the rows layout. One channel's runs are S values every C*S: at
// 64x128x16x16 a 1 KiB run each 128 KiB, and loads that jump like that stall (the hardware
// prefetchers stop at page boundaries): the forward ran at half the speed of the same
// values read in order. A group's runs of one sample are adjacent, so a group of k
// channels reads k*S values in a row. k aims at 16 KiB in a row (4 KiB gained most, 16 KiB
// a little more, measured on this project's 2-core CPU), is kept small enough that the
// group's slices of the `tensors` inputs (1 MiB each at most) are still cached for the
// passes after the first, and leaves every thread at least four groups.
int64_t rows_group_size(int64_t N, int64_t C, int64_t S, int64_t element_size, int64_t tensors) {
  const int64_t run_bytes = std::max<int64_t>(1, S * element_size);
  const int64_t contiguous = ((16 << 10) + run_bytes - 1) / run_bytes;
  const int64_t cached = (1 << 20) / std::max<int64_t>(1, tensors * N * run_bytes);
  const int64_t per_thread = C / (4 * at::get_num_threads());
  return std::max<int64_t>(1, std::min({contiguous, cached, per_thread}));
}

// Calls f(c - c0, offset of the run) for the runs of channels [c0, c1) in memory order
// (n outer): each channel still sees its runs in n order, as if alone.
template <typename F>
void for_group_runs(int64_t N, int64_t C, int64_t S, int64_t c0, int64_t c1, F&& f) {
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = c0; c < c1; ++c) f(c - c0, (i * C + c) * S);
}

// dx for rows [r0, r1) of the channels layout (see grad_sums_rows in norm_loops.h).
template <typename scalar_t, typename opmath_t, int act>
void grad_input_rows(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, scalar_t* __restrict__ out,
                     int64_t r0, int64_t r1, int64_t C, const opmath_t* __restrict__ mean,
                     const opmath_t* __restrict__ invstd, const opmath_t* __restrict__ scale,
                     const opmath_t* __restrict__ bias, const opmath_t* __restrict__ mean_dz,
                     const opmath_t* __restrict__ mean_dzx, opmath_t slope, bool training) {
  // fp16/bf16 16 channels at a time, as grad_input_run.
  const auto f = [&](int64_t c, const auto& xv, const auto& dyv) {
    using Vec = std::decay_t<decltype(xv)>;
    return grad_input_vec<act>(xv, dyv, Vec::loadu(mean + c), Vec::loadu(invstd + c), Vec::loadu(scale + c),
                               Vec::loadu(bias + c), Vec(slope), Vec::loadu(mean_dz + c), Vec::loadu(mean_dzx + c),
                               training);
  };
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = widened_loop(out + r * C, C, f, x + r * C, dy + r * C); c < C; ++c) {
      const opmath_t xv = x[r * C + c];
      const opmath_t dz = pre_activation_grad<opmath_t>(dy[r * C + c], xv, mean[c], scale[c], bias[c], slope, act);
      out[r * C + c] = static_cast<scalar_t>(
          grad_input(dz, (xv - mean[c]) * invstd[c], scale[c], mean_dz[c], mean_dzx[c], training));
    }
}

// One (n, c) run of the rows layout, the same way.
template <typename scalar_t, typename opmath_t, int act, bool training>
void grad_input_run(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, scalar_t* __restrict__ out,
                    int64_t len, opmath_t mean, opmath_t invstd, opmath_t scale, opmath_t bias, opmath_t slope,
                    opmath_t mean_dz, opmath_t mean_dzx) {
  // fp16/bf16: 16 at a time (norm_loops.h, widened_loop and grad_input_vec).
  const auto f = [&](int64_t, const auto& xv, const auto& dyv) {
    using Vec = std::decay_t<decltype(xv)>;
    return grad_input_vec<act>(xv, dyv, Vec(mean), Vec(invstd), Vec(scale), Vec(bias), Vec(slope), Vec(mean_dz),
                               Vec(mean_dzx), training);
  };
  for (int64_t s = widened_loop(out, len, f, x, dy); s < len; ++s) {
    const opmath_t xv = x[s];
    const opmath_t dz = pre_activation_grad<opmath_t>(dy[s], xv, mean, scale, bias, slope, act);
    out[s] = static_cast<scalar_t>(grad_input(dz, (xv - mean) * invstd, scale, mean_dz, mean_dzx, training));
  }
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// The statistics of forward_rows by run length S (paired timings of the training forward
// on the 2-core CPU): runs under kShortRun values, two passes in double (0.5x-0.9x of the
// chunks' time at 1 to 9 values); up to kLaneRun, two passes in lane sums (0.8x-0.87x at
// 16 values, fp32 and bf16, where double passes took 1.03x-1.13x; at 64 a tie in fp32 and
// about 0.75x in bf16 and fp16, whose chunks convert and merge per run: the NCHW 8x8
// forward went from 1.00x to 1.32x of stock in bf16, 0.90x to 1.33x in fp16); longer runs,
// chunk statistics merged in order (at 256 values the lane sums were slower in fp32, 4.1x
// of stock against 3.4x, and a tie in bf16 and fp16).
constexpr int64_t kShortRun = 16, kLaneRun = 64;

// Rows layout: a group of channels at a time (rows_group_size), statistics (one read of
// x) then output while the group's slice is still in cache, so x comes from memory once
// (2N bytes). Training fills mean/var (biased); eval reads them.
template <typename scalar_t, int act>
void forward_rows(const Layout& L, const std::vector<double>& w, const std::vector<double>& b, double eps,
                  bool training, at::opmath_type<scalar_t> slope, std::vector<double>& mean_v,
                  std::vector<double>& var_v, scalar_t* __restrict__ y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x = L.t.data_ptr<scalar_t>();
  const int64_t N = L.N, C = L.C, S = L.S, k = rows_group_size(N, C, S, sizeof(scalar_t), 1);
  const bool stream = L.t.numel() * int64_t(sizeof(scalar_t)) >= kStreamBytes;
  at::parallel_for(0, (C + k - 1) / k, grain(k * N * S), [&, slope, x, y](int64_t g0, int64_t g1) {
    std::vector<double> count(k), channel_mean(k), channel_m2(k);
    std::vector<opmath_t> mean(k), scale(k), bias(k), shift(k);
    std::vector<LaneSum<opmath_t>> lanes(k);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t c0 = g * k, c1 = std::min(C, c0 + k);
      if (training) {
        // Each chunk's exact statistics, merged in memory order (a channel's in n order).
        std::fill(count.begin(), count.end(), 0.0);
        std::fill(channel_mean.begin(), channel_mean.end(), 0.0);
        std::fill(channel_m2.begin(), channel_m2.end(), 0.0);
        if (S < kShortRun) {
          // Runs of a few values (4x4 maps and smaller): each channel's N * S values in two
          // passes in double, from cache; per-run statistics and merges would cost more
          // than the values themselves on these small layers.
          for_group_runs(N, C, S, c0, c1, [&](int64_t j, int64_t run) {
            for (int64_t s = 0; s < S; ++s) channel_mean[j] += static_cast<double>(x[run + s]);
          });
          for (int64_t j = 0; j < c1 - c0; ++j) count[j] = double(N * S), channel_mean[j] /= count[j];
          for_group_runs(N, C, S, c0, c1, [&](int64_t j, int64_t run) {
            for (int64_t s = 0; s < S; ++s) {
              const double d = static_cast<double>(x[run + s]) - channel_mean[j];
              channel_m2[j] += d * d;
            }
          });
        } else if (S <= kLaneRun) {
          // Runs of 16 to 64 values (4x4 to 8x8 maps): the same two passes over each
          // channel's runs, in lane sums (norm_loops.h, add_deviations) instead of a chunk's
          // reductions and merge per run, which cost more than its values here. The first
          // pass sums deviations from the channel's first value, so its fp32 lanes round
          // at the scale of the spread, not of the mean.
          for (int64_t j = 0; j < c1 - c0; ++j)
            lanes[j] = LaneSum<opmath_t>(), shift[j] = static_cast<opmath_t>(x[(c0 + j) * S]);
          for_group_runs(N, C, S, c0, c1, [&](int64_t j, int64_t run) {
            add_deviations<1>(x + run, S, shift[j], lanes[j]);
          });
          for (int64_t j = 0; j < c1 - c0; ++j) {
            count[j] = double(N * S), channel_mean[j] = double(shift[j]) + lanes[j].result() / count[j];
            lanes[j] = LaneSum<opmath_t>(), shift[j] = opmath_t(channel_mean[j]);
          }
          for_group_runs(N, C, S, c0, c1, [&](int64_t j, int64_t run) {
            add_deviations<2>(x + run, S, shift[j], lanes[j]);
          });
          for (int64_t j = 0; j < c1 - c0; ++j) channel_m2[j] = lanes[j].result();
        } else {
          // Chunk means as deviations from the channel's first value (norm_loops.h, chunk_stats).
          for (int64_t j = 0; j < c1 - c0; ++j) shift[j] = static_cast<opmath_t>(x[(c0 + j) * S]);
          for_group_runs(N, C, S, c0, c1, [&](int64_t j, int64_t run) {
            for_chunks(x + run, S, [&](const opmath_t* p, int64_t len) {
              opmath_t chunk_mean, chunk_m2;
              chunk_stats(p, len, shift[j], chunk_mean, chunk_m2);
              welford_merge<double>(count[j], channel_mean[j], channel_m2[j], double(len), chunk_mean, chunk_m2);
            });
          });
          for (int64_t j = 0; j < c1 - c0; ++j) channel_mean[j] += double(shift[j]);
        }
        for (int64_t j = 0; j < c1 - c0; ++j)
          mean_v[c0 + j] = channel_mean[j], var_v[c0 + j] = channel_m2[j] / count[j];
      }
      for (int64_t c = c0; c < c1; ++c)
        mean[c - c0] = mean_v[c], scale[c - c0] = w[c] / std::sqrt(var_v[c] + eps), bias[c - c0] = b[c];
      for_group_runs(N, C, S, c0, c1, [&](int64_t j, int64_t run) {
        write_run(y + run, S, stream, [&](scalar_t* dst, int64_t s0, int64_t n) {
          apply_run<scalar_t, opmath_t, act>(x + run + s0, dst, n, mean[j], scale[j], bias[j], slope);
        });
      });
    }
    if (stream) stream_fence();
  });
}

// Channels layout: per-channel statistics over fixed row blocks (channel_stats_rows), then
// every row is normalised.
template <typename scalar_t, int act>
void forward_channels(const Layout& L, const std::vector<double>& w, const std::vector<double>& b, double eps,
                      bool training, at::opmath_type<scalar_t> slope, std::vector<double>& mean_v,
                      std::vector<double>& var_v, scalar_t* __restrict__ y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x = L.t.data_ptr<scalar_t>();
  const int64_t C = L.C, R = L.N * L.S;
  if (training) {
    channel_stats_rows(x, R, C, mean_v.data(), var_v.data());
    for (int64_t c = 0; c < C; ++c) var_v[c] /= double(R);  // M2 -> biased variance
  }
  std::vector<opmath_t> mean(C), scale(C), bias(C);
  for (int64_t c = 0; c < C; ++c)
    mean[c] = mean_v[c], scale[c] = w[c] / std::sqrt(var_v[c] + eps), bias[c] = b[c];
  at::parallel_for(0, R, grain(C), [&, slope, x, y](int64_t r0, int64_t r1) {
    apply_rows<scalar_t, opmath_t, act>(x, y, r0, r1, C, mean.data(), scale.data(), bias.data(), slope);
  });
}

std::tuple<Tensor, Tensor, Tensor> bn_act_forward_cpu(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                                                      const std::optional<Tensor>& mean_in,
                                                      const std::optional<Tensor>& var_in, bool training, double eps,
                                                      int64_t act, double slope) {
  check_bn_act_forward(x_in, training, mean_in, var_in);
  const Layout L = layout_of(x_in);
  Tensor y = new_output(L.t);
  const auto stats_options = x_in.options().dtype(acc_dtype(x_in));
  const std::vector<double> w = to_vector(weight), b = to_vector(bias);
  std::vector<double> mean = training ? std::vector<double>(L.C, 0.0) : to_vector(*mean_in);
  std::vector<double> var = training ? std::vector<double>(L.C, 0.0) : to_vector(*var_in);
  if (L.N * L.S > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "bn_act_forward_cpu", [&] {
      const auto s = static_cast<at::opmath_type<scalar_t>>(slope);
      with_activation(act, [&](auto a) {
        constexpr int A = decltype(a)::value;
        if (L.channels_fast) forward_channels<scalar_t, A>(L, w, b, eps, training, s, mean, var, y.data_ptr<scalar_t>());
        else forward_rows<scalar_t, A>(L, w, b, eps, training, s, mean, var, y.data_ptr<scalar_t>());
      });
    });
  }
  return {y, from_vector(mean, stats_options), from_vector(var, stats_options)};
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

// The per-channel inputs of the backward: statistics forward used, parameters, and R, the
// rows each channel's sums run over.
struct ChannelValues {
  std::vector<double> mean, var, weight, bias;
  double eps;
  int64_t rows;
};

// One channel's values for the backward loops, from its statistics and its sums of dz and
// dz * xhat (the mean terms of the training gradient; pass 0 before they are summed).
template <typename opmath_t>
struct ChannelGrad {
  opmath_t mean, invstd, scale, bias, mean_dz, mean_dz_xhat;

  ChannelGrad() = default;
  ChannelGrad(const ChannelValues& v, int64_t c, double sum_dz, double sum_dz_xhat) {
    const double inv = 1.0 / std::sqrt(v.var[c] + v.eps);
    mean = opmath_t(v.mean[c]), invstd = opmath_t(inv), scale = opmath_t(v.weight[c] * inv);
    bias = opmath_t(v.bias[c]);
    mean_dz = opmath_t(v.rows ? sum_dz / v.rows : 0.0), mean_dz_xhat = opmath_t(v.rows ? sum_dz_xhat / v.rows : 0.0);
  }
};

// Rows layout: a group of channels at a time (rows_group_size), runs in memory order: the
// sums, then dx while the group's x and dy are in cache (3N bytes). Fills dweight = sum
// dz * xhat and dbias = sum dz.
template <typename scalar_t, int act>
void backward_rows(const Layout& L, const scalar_t* dy, const ChannelValues& v, at::opmath_type<scalar_t> slope,
                   bool training, std::vector<double>& dweight, std::vector<double>& dbias, scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x = L.t.data_ptr<scalar_t>();
  const int64_t N = L.N, C = L.C, S = L.S, k = rows_group_size(N, C, S, sizeof(scalar_t), 2);
  const bool stream = L.t.numel() * int64_t(sizeof(scalar_t)) >= kStreamBytes;
  const auto grad_run = training ? grad_input_run<scalar_t, opmath_t, act, true>
                                 : grad_input_run<scalar_t, opmath_t, act, false>;
  at::parallel_for(0, (C + k - 1) / k, grain(k * N * S), [&, x, dy, out, slope](int64_t g0, int64_t g1) {
    opmath_t x_buf[kChunk], dy_buf[kChunk];
    std::vector<LaneSum<opmath_t>> sum_dz(k), sum_dz_xmu(k);
    std::vector<ChannelGrad<opmath_t>> e(k);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t c0 = g * k, c1 = std::min(C, c0 + k);
      for (int64_t c = c0; c < c1; ++c)
        e[c - c0] = ChannelGrad<opmath_t>(v, c, 0, 0), sum_dz[c - c0] = LaneSum<opmath_t>(),
        sum_dz_xmu[c - c0] = LaneSum<opmath_t>();
      for_group_runs(N, C, S, c0, c1, [&](int64_t j, int64_t run) {
        for (int64_t s0 = 0; s0 < S; s0 += kChunk) {
          const int64_t len = std::min(kChunk, S - s0);
          add_grad_terms<opmath_t, act>(as_opmath(x + run + s0, len, x_buf), as_opmath(dy + run + s0, len, dy_buf),
                                        len, e[j].mean, e[j].scale, e[j].bias, slope, sum_dz[j], sum_dz_xmu[j]);
        }
      });
      for (int64_t c = c0; c < c1; ++c) {
        dbias[c] = sum_dz[c - c0].result();
        dweight[c] = sum_dz_xmu[c - c0].result() * e[c - c0].invstd;
        e[c - c0] = ChannelGrad<opmath_t>(v, c, dbias[c], dweight[c]);
      }
      for_group_runs(N, C, S, c0, c1, [&](int64_t j, int64_t run) {
        const auto& f = e[j];
        write_run(out + run, S, stream, [&](scalar_t* dst, int64_t s0, int64_t n) {
          grad_run(x + run + s0, dy + run + s0, dst, n, f.mean, f.invstd, f.scale, f.bias, slope, f.mean_dz,
                   f.mean_dz_xhat);
        });
      });
    }
    if (stream) stream_fence();
  });
}

// Channels layout: per-channel sums over fixed row blocks, added in block order, then dx
// row by row. Per-channel values as separate arrays, so the loops over channels vectorize.
template <typename scalar_t, int act>
void backward_channels(const Layout& L, const scalar_t* dy, const ChannelValues& v, at::opmath_type<scalar_t> slope,
                       bool training, std::vector<double>& dweight, std::vector<double>& dbias, scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x = L.t.data_ptr<scalar_t>();
  const int64_t C = L.C, R = L.N * L.S;
  std::vector<opmath_t> mean(C), invstd(C), scale(C), bias(C), mean_dz(C), mean_dzx(C);
  for (int64_t c = 0; c < C; ++c) {
    const ChannelGrad<opmath_t> e(v, c, 0, 0);
    mean[c] = e.mean, invstd[c] = e.invstd, scale[c] = e.scale, bias[c] = e.bias;
  }
  channel_grad_sums_rows<scalar_t, opmath_t, act>(x, dy, R, C, mean.data(), scale.data(), bias.data(), slope,
                                                  dbias.data(), dweight.data());
  for (int64_t c = 0; c < C; ++c) {
    dweight[c] *= invstd[c];
    const ChannelGrad<opmath_t> e(v, c, dbias[c], dweight[c]);
    mean_dz[c] = e.mean_dz, mean_dzx[c] = e.mean_dz_xhat;
  }
  at::parallel_for(0, R, grain(C), [&, x, dy, out, slope](int64_t r0, int64_t r1) {
    grad_input_rows<scalar_t, opmath_t, act>(x, dy, out, r0, r1, C, mean.data(), invstd.data(), scale.data(),
                                             bias.data(), mean_dz.data(), mean_dzx.data(), slope, training);
  });
}

std::tuple<Tensor, Tensor, Tensor> bn_act_backward_cpu(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight,
                                                       const Tensor& bias, const Tensor& mean_t, const Tensor& var_t,
                                                       bool training, double eps, int64_t act, double slope) {
  check_bn_act_backward(dy_in, x_in);
  const Layout L = layout_of(x_in);
  const Tensor dy_t = in_layout(dy_in.to(x_in.scalar_type()), L);
  Tensor dx = new_output(L.t);
  const ChannelValues v{to_vector(mean_t), to_vector(var_t), to_vector(weight), to_vector(bias), eps, L.N * L.S};
  std::vector<double> dweight(L.C, 0.0), dbias(L.C, 0.0);  // sum dz * xhat, sum dz (double)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "bn_act_backward_cpu", [&] {
    const auto s = static_cast<at::opmath_type<scalar_t>>(slope);
    with_activation(act, [&](auto a) {
      constexpr int A = decltype(a)::value;
      const auto run = L.channels_fast ? backward_channels<scalar_t, A> : backward_rows<scalar_t, A>;
      run(L, dy_t.data_ptr<scalar_t>(), v, s, training, dweight, dbias, dx.data_ptr<scalar_t>());
    });
  });
  return {dx, from_vector(dweight, weight.options()), from_vector(dbias, bias.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedgan, CPU, m) {
  m.impl("bn_act_forward", &bn_act_forward_cpu);
  m.impl("bn_act_backward", &bn_act_backward_cpu);
}

}  // namespace fusedgan
