// GroupNorm + activation, C++ CPU kernels (registered for the CPU dispatch key). Statistics
// are taken per (sample, group); InstanceNorm is groups = C. Two layouts, read in place:
//  - rows (contiguous NCHW): a (sample, group) is one run of Cg * S values. Threads take
//    (sample, group) pairs; each one's statistics come from exact chunk statistics merged in
//    order, and its output follows while the run is in cache (x comes from memory once
//    when the run fits the cache, 2N bytes forward and 3N backward); fp32 outputs of 8 MiB
//    and more are written with streaming stores, as BatchNorm's (norm_loops.h, write_run).
//  - channels (channels_last, and (N, C) or (N, C, L) inputs copied to it by layout_of):
//    sample by sample, per-channel statistics over fixed row blocks merged in block order,
//    then the channels of each group merged in channel order.
// Every sum is taken in a fixed order, so results are bitwise repeatable whatever the
// thread count. Statistics and sums are gathered in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../kernel_math.h"
#include "../op_checks.h"
#include "helpers.h"
#include "layout.h"
#include "norm_loops.h"

namespace fusedgan {
namespace {

// One sample-group's values for the loops: statistics, and (backward) the group means of
// weight * dz and weight * dz * xhat.
struct GroupStats {
  double mean = 0, rstd = 0, mean_wdz = 0, mean_wdz_xhat = 0;
};

std::vector<GroupStats> read_stats(const Tensor& mean, const Tensor& var, double eps) {
  const std::vector<double> m = to_vector(mean.reshape(-1)), v = to_vector(var.reshape(-1));
  std::vector<GroupStats> stats(m.size());
  for (size_t i = 0; i < m.size(); ++i) stats[i].mean = m[i], stats[i].rstd = 1.0 / std::sqrt(v[i] + eps);
  return stats;
}

// ---------------------------------------------------------------------------------------
// Forward: fills mean and var (biased) per (sample, group), then y.
// ---------------------------------------------------------------------------------------

template <typename scalar_t, int act>
void forward_rows(const Layout& L, int64_t G, const std::vector<double>& w, const std::vector<double>& b,
                  double eps, at::opmath_type<scalar_t> slope, std::vector<double>& mean_v,
                  std::vector<double>& var_v, scalar_t* __restrict__ y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x = L.t.data_ptr<scalar_t>();
  const int64_t C = L.C, S = L.S, Cg = C / G;
  const bool stream = L.t.numel() * int64_t(sizeof(scalar_t)) >= kStreamBytes;
  at::parallel_for(0, L.N * G, grain(Cg * S), [&, x, y, slope](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {  // i = n * G + g
      const scalar_t* run = x + i * Cg * S;
      double count = 0, mean = 0, m2 = 0;
      const opmath_t shift = static_cast<opmath_t>(run[0]);  // chunk means as deviations from it (chunk_stats)
      for_chunks(run, Cg * S, [&](const opmath_t* p, int64_t len) {
        opmath_t chunk_mean, chunk_m2;
        chunk_stats(p, len, shift, chunk_mean, chunk_m2);
        welford_merge<double>(count, mean, m2, double(len), chunk_mean, chunk_m2);
      });
      mean += double(shift);
      mean_v[i] = mean, var_v[i] = m2 / count;
      const double rstd = 1.0 / std::sqrt(var_v[i] + eps);
      for (int64_t j = 0; j < Cg; ++j) {
        const int64_t c = (i % G) * Cg + j;
        write_run(y + (i * Cg + j) * S, S, stream, [&](scalar_t* dst, int64_t s0, int64_t n) {
          apply_run<scalar_t, opmath_t, act>(run + j * S + s0, dst, n, opmath_t(mean), opmath_t(w[c] * rstd),
                                             opmath_t(b[c]), slope);
        });
      }
    }
    if (stream) stream_fence();
  });
}

template <typename scalar_t, int act>
void forward_channels(const Layout& L, int64_t G, const std::vector<double>& w, const std::vector<double>& b,
                      double eps, at::opmath_type<scalar_t> slope, std::vector<double>& mean_v,
                      std::vector<double>& var_v, scalar_t* __restrict__ y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = L.N, C = L.C, S = L.S, Cg = C / G;
  std::vector<double> channel_mean(C), channel_m2(C);
  std::vector<opmath_t> mean(C), scale(C), bias(C);
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* x = L.t.data_ptr<scalar_t>() + n * S * C;
    channel_stats_rows(x, S, C, channel_mean.data(), channel_m2.data());
    for (int64_t g = 0; g < G; ++g) {
      double count = 0, group_mean = 0, m2 = 0;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        welford_merge<double>(count, group_mean, m2, double(S), channel_mean[c], channel_m2[c]);
      mean_v[n * G + g] = group_mean, var_v[n * G + g] = m2 / count;
      const double rstd = 1.0 / std::sqrt(var_v[n * G + g] + eps);
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        mean[c] = opmath_t(group_mean), scale[c] = opmath_t(w[c] * rstd), bias[c] = opmath_t(b[c]);
    }
    scalar_t* out = y + n * S * C;
    at::parallel_for(0, S, grain(C), [&, x, out, slope](int64_t r0, int64_t r1) {
      apply_rows<scalar_t, opmath_t, act>(x, out, r0, r1, C, mean.data(), scale.data(), bias.data(), slope);
    });
  }
}

std::tuple<Tensor, Tensor, Tensor> gn_act_forward_cpu(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                                                      int64_t groups, double eps, int64_t act, double slope) {
  check_gn_act(x_in, groups);
  const Layout L = layout_of(x_in);
  Tensor y = new_output(L.t);
  std::vector<double> mean(L.N * groups, 0.0), var(L.N * groups, 0.0);
  const std::vector<double> w = to_vector(weight), b = to_vector(bias);
  if (L.S * L.C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "gn_act_forward_cpu", [&] {
      const auto s = static_cast<at::opmath_type<scalar_t>>(slope);
      with_activation(act, [&](auto a) {
        constexpr int A = decltype(a)::value;
        if (L.channels_fast) forward_channels<scalar_t, A>(L, groups, w, b, eps, s, mean, var, y.data_ptr<scalar_t>());
        else forward_rows<scalar_t, A>(L, groups, w, b, eps, s, mean, var, y.data_ptr<scalar_t>());
      });
    });
  }
  const auto options = x_in.options().dtype(acc_dtype(x_in));
  return {y, from_vector(mean, options).view({L.N, groups}), from_vector(var, options).view({L.N, groups})};
}

// ---------------------------------------------------------------------------------------
// Backward: per (sample, channel) sums of dz and dz * (x - mean); from them dweight, dbias
// and each group's means of weight * dz and weight * dz * xhat; then dx.
// ---------------------------------------------------------------------------------------

// Sets sample-group i's means of weight * dz and weight * dz * xhat from the per-(sample,
// channel) sums of dz and dz * (x - mean).
void group_means(GroupStats& st, int64_t i, const std::vector<double>& sum_dz, const std::vector<double>& sum_dzx,
                 const std::vector<double>& w, int64_t G, int64_t C, int64_t S) {
  const int64_t Cg = C / G, n = i / G, g = i % G;
  double wdz = 0, wdzx = 0;
  for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) wdz += w[c] * sum_dz[n * C + c], wdzx += w[c] * sum_dzx[n * C + c];
  st.mean_wdz = wdz / double(Cg * S);
  st.mean_wdz_xhat = wdzx * st.rstd / double(Cg * S);
}

template <typename scalar_t, typename opmath_t, int act>
void grad_input_values(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, scalar_t* __restrict__ out,
                       int64_t len, const GroupStats& st, double w, double b, opmath_t slope) {
  const opmath_t mean = opmath_t(st.mean), rstd = opmath_t(st.rstd), scale = opmath_t(w * st.rstd);
  const opmath_t weight = opmath_t(w), bias = opmath_t(b);
  const opmath_t k1 = opmath_t(st.mean_wdz), k2 = opmath_t(st.mean_wdz_xhat);
  // fp16/bf16 16 at a time (norm_loops.h, widened_loop); z as forward computes it.
  const auto f = [&](int64_t, const auto& xv, const auto& dyv) {
    using Vec = std::decay_t<decltype(xv)>;
    const Vec centered = xv - Vec(mean);
    const Vec dz = activation_grad_vec<act>(dyv, at::vec::fmadd(centered, Vec(scale), Vec(bias)), Vec(slope));
    return group_grad_input_vec(dz, centered * Vec(rstd), Vec(weight), Vec(rstd), Vec(k1), Vec(k2));
  };
  for (int64_t s = widened_loop(out, len, f, x, dy); s < len; ++s) {
    const opmath_t xv = x[s];
    const opmath_t dz = pre_activation_grad<opmath_t>(dy[s], xv, mean, scale, bias, slope, act);
    out[s] = static_cast<scalar_t>(group_grad_input(dz, (xv - mean) * rstd, weight, rstd, k1, k2));
  }
}

template <typename scalar_t, int act>
void backward_rows(const Layout& L, const scalar_t* dy, int64_t G, const std::vector<double>& w,
                   const std::vector<double>& b, at::opmath_type<scalar_t> slope, std::vector<GroupStats>& stats,
                   std::vector<double>& sum_dz, std::vector<double>& sum_dzx, scalar_t* __restrict__ dx) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x = L.t.data_ptr<scalar_t>();
  const int64_t C = L.C, S = L.S, Cg = C / G;
  const bool stream = L.t.numel() * int64_t(sizeof(scalar_t)) >= kStreamBytes;
  at::parallel_for(0, L.N * G, grain(Cg * S), [&, x, dy, dx, slope](int64_t i0, int64_t i1) {
    opmath_t x_buf[kChunk], dy_buf[kChunk];
    for (int64_t i = i0; i < i1; ++i) {
      auto& st = stats[i];
      for (int64_t j = 0; j < Cg; ++j) {  // the (sample, channel) sums, run by run
        const int64_t c = (i % G) * Cg + j, offset = (i * Cg + j) * S;
        LaneSum<opmath_t> dz_sum, dzx_sum;
        for (int64_t s0 = 0; s0 < S; s0 += kChunk) {
          const int64_t len = std::min(kChunk, S - s0);
          add_grad_terms<opmath_t, act>(as_opmath(x + offset + s0, len, x_buf), as_opmath(dy + offset + s0, len, dy_buf),
                                        len, opmath_t(st.mean), opmath_t(w[c] * st.rstd), opmath_t(b[c]), slope,
                                        dz_sum, dzx_sum);
        }
        sum_dz[(i / G) * C + c] = dz_sum.result(), sum_dzx[(i / G) * C + c] = dzx_sum.result();
      }
      group_means(st, i, sum_dz, sum_dzx, w, G, C, S);
      for (int64_t j = 0; j < Cg; ++j) {  // dx while the group's runs are in cache
        const int64_t c = (i % G) * Cg + j, offset = (i * Cg + j) * S;
        write_run(dx + offset, S, stream, [&](scalar_t* dst, int64_t s0, int64_t n) {
          grad_input_values<scalar_t, opmath_t, act>(x + offset + s0, dy + offset + s0, dst, n, st, w[c], b[c], slope);
        });
      }
    }
    if (stream) stream_fence();
  });
}

// dx for rows [r0, r1) of one sample in the channels layout, per-channel values in arrays
// (k1, k2: the channel's group means of weight * dz and weight * dz * xhat).
template <typename scalar_t, typename opmath_t, int act>
void grad_input_group_rows(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy,
                           scalar_t* __restrict__ out, int64_t r0, int64_t r1, int64_t C,
                           const opmath_t* __restrict__ mean, const opmath_t* __restrict__ rstd,
                           const opmath_t* __restrict__ scale, const opmath_t* __restrict__ weight,
                           const opmath_t* __restrict__ bias, const opmath_t* __restrict__ k1,
                           const opmath_t* __restrict__ k2, opmath_t slope) {
  const auto f = [&](int64_t c, const auto& xv, const auto& dyv) {  // fp16/bf16, as grad_input_values
    using Vec = std::decay_t<decltype(xv)>;
    const Vec centered = xv - Vec::loadu(mean + c), channel_rstd = Vec::loadu(rstd + c);
    const Vec z = at::vec::fmadd(centered, Vec::loadu(scale + c), Vec::loadu(bias + c));
    return group_grad_input_vec(activation_grad_vec<act>(dyv, z, Vec(slope)), centered * channel_rstd,
                                Vec::loadu(weight + c), channel_rstd, Vec::loadu(k1 + c), Vec::loadu(k2 + c));
  };
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = widened_loop(out + r * C, C, f, x + r * C, dy + r * C); c < C; ++c) {
      const opmath_t xv = x[r * C + c];
      const opmath_t dz = pre_activation_grad<opmath_t>(dy[r * C + c], xv, mean[c], scale[c], bias[c], slope, act);
      out[r * C + c] = static_cast<scalar_t>(group_grad_input(dz, (xv - mean[c]) * rstd[c], weight[c], rstd[c],
                                                               k1[c], k2[c]));
    }
}

template <typename scalar_t, int act>
void backward_channels(const Layout& L, const scalar_t* dy, int64_t G, const std::vector<double>& w,
                       const std::vector<double>& b, at::opmath_type<scalar_t> slope, std::vector<GroupStats>& stats,
                       std::vector<double>& sum_dz, std::vector<double>& sum_dzx, scalar_t* __restrict__ dx) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = L.N, C = L.C, S = L.S, Cg = C / G;
  std::vector<opmath_t> mean(C), rstd(C), scale(C), weight(C), bias(C), k1(C), k2(C);
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* x = L.t.data_ptr<scalar_t>() + n * S * C;
    const scalar_t* dy_n = dy + n * S * C;
    for (int64_t c = 0; c < C; ++c) {
      const auto& st = stats[n * G + c / Cg];
      mean[c] = opmath_t(st.mean), rstd[c] = opmath_t(st.rstd), scale[c] = opmath_t(w[c] * st.rstd);
      weight[c] = opmath_t(w[c]), bias[c] = opmath_t(b[c]);
    }
    channel_grad_sums_rows<scalar_t, opmath_t, act>(x, dy_n, S, C, mean.data(), scale.data(), bias.data(), slope,
                                                    &sum_dz[n * C], &sum_dzx[n * C]);
    for (int64_t g = 0; g < G; ++g) group_means(stats[n * G + g], n * G + g, sum_dz, sum_dzx, w, G, C, S);
    for (int64_t c = 0; c < C; ++c)
      k1[c] = opmath_t(stats[n * G + c / Cg].mean_wdz), k2[c] = opmath_t(stats[n * G + c / Cg].mean_wdz_xhat);
    scalar_t* out = dx + n * S * C;
    at::parallel_for(0, S, grain(C), [&, x, dy_n, out, slope](int64_t r0, int64_t r1) {
      grad_input_group_rows<scalar_t, opmath_t, act>(x, dy_n, out, r0, r1, C, mean.data(), rstd.data(), scale.data(),
                                                     weight.data(), bias.data(), k1.data(), k2.data(), slope);
    });
  }
}

std::tuple<Tensor, Tensor, Tensor> gn_act_backward_cpu(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight,
                                                       const Tensor& bias, const Tensor& mean, const Tensor& var,
                                                       int64_t groups, double eps, int64_t act, double slope) {
  check_gn_act(x_in, groups);
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), "fusedgan::gn_act_backward: grad and input shapes differ");
  const Layout L = layout_of(x_in);
  const Tensor dy_t = in_layout(dy_in.to(x_in.scalar_type()), L);
  Tensor dx = new_output(L.t);
  const int64_t N = L.N, C = L.C;
  const std::vector<double> w = to_vector(weight), b = to_vector(bias);
  std::vector<GroupStats> stats = read_stats(mean, var, eps);
  std::vector<double> sum_dz(N * C, 0.0), sum_dzx(N * C, 0.0);
  if (L.S * C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "gn_act_backward_cpu", [&] {
      const auto s = static_cast<at::opmath_type<scalar_t>>(slope);
      with_activation(act, [&](auto a) {
        constexpr int A = decltype(a)::value;
        const auto run = L.channels_fast ? backward_channels<scalar_t, A> : backward_rows<scalar_t, A>;
        run(L, dy_t.data_ptr<scalar_t>(), groups, w, b, s, stats, sum_dz, sum_dzx, dx.data_ptr<scalar_t>());
      });
    });
  }
  // dbias = sum over samples of sum dz; dweight = sum over samples of rstd * sum dz * (x - mean), in n order.
  std::vector<double> dweight(C, 0.0), dbias(C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      dbias[c] += sum_dz[n * C + c];
      dweight[c] += sum_dzx[n * C + c] * stats[n * groups + c / (C / groups)].rstd;
    }
  return {dx, from_vector(dweight, weight.options()), from_vector(dbias, bias.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedgan, CPU, m) {
  m.impl("gn_act_forward", &gn_act_forward_cpu);
  m.impl("gn_act_backward", &gn_act_backward_cpu);
}

}  // namespace fusedgan
