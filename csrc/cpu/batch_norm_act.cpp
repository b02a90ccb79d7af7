// BatchNorm + activation, C++ CPU kernels (registered for the CPU dispatch key).
//
// Two layouts are read in place:
//  - rows (contiguous NCHW): each (n, c) is a run of S contiguous values. Threads take
//    whole channels; a channel's statistics are a Chan merge of its runs' exact two-pass
//    (mean, M2), each run re-read from L1/L2 rather than memory.
//  - channels (channels_last, and (N, C) inputs): each of the R = N*S rows holds C
//    contiguous channels. Rows are cut into a fixed number of blocks, each block reduces
//    into per-channel partials, and the partials are merged in block order.
// Any other layout is copied to contiguous first. The work split never depends on the
// number of threads, so results are bitwise repeatable. Sums accumulate in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../bn_act_math.h"

namespace fusedgan {
namespace {

using at::Tensor;

constexpr int64_t kChunk = 256;      // elements converted/summed at a time (on the stack)
constexpr int64_t kRowBlocks = 64;   // fixed row blocks of the channels layout

struct Layout {
  Tensor t;  // the tensor in the chosen layout (a copy only if it was in neither)
  bool channels_fast;
  int64_t N, C, S;
};

at::MemoryFormat channels_last_format(const Tensor& x) {
  return x.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
}

Layout layout_of(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), S = C ? x.numel() / std::max<int64_t>(N * C, 1) : 0;
  const bool cl = (x.dim() == 4 || x.dim() == 5) && x.is_contiguous(channels_last_format(x));
  if (x.is_contiguous() && (S == 1 || x.dim() == 2)) return {x, true, N, C, S};
  if (cl && !x.is_contiguous()) return {x, true, N, C, S};
  return {x.contiguous(), false, N, C, S};
}

// `t` in the layout of `like` (dy and dx follow x).
Tensor in_layout(const Tensor& t, const Layout& like) {
  if (!like.channels_fast || like.S == 1 || t.dim() == 2) return t.contiguous();
  return t.contiguous(channels_last_format(t));
}

// Sum of (v[i] - center) or (v[i] - center)^2 over a contiguous run, with at::vec lanes
// inside a chunk and a double across chunks.
template <bool squared, typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
double run_sum(const scalar_t* v, int64_t n, opmath_t center) {
  using Vec = at::vec::Vectorized<opmath_t>;
  opmath_t buf[kChunk];
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t len = std::min(kChunk, n - i0);
    const opmath_t* p;
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      p = v + i0;
    } else {
      for (int64_t i = 0; i < len; ++i) buf[i] = static_cast<opmath_t>(v[i0 + i]);
      p = buf;
    }
    const Vec c(center);
    Vec acc(opmath_t(0));
    int64_t i = 0;
    for (; i + Vec::size() <= len; i += Vec::size()) {
      const Vec d = Vec::loadu(p + i) - c;
      if constexpr (squared) acc = at::vec::fmadd(d, d, acc);
      else acc = acc + d;
    }
    opmath_t part = at::vec::vec_reduce_all<opmath_t>([](Vec& a, Vec& b) { return a + b; }, acc);
    for (; i < len; ++i) {
      const opmath_t d = p[i] - center;
      if constexpr (squared) part += d * d;
      else part += d;
    }
    total += part;
  }
  return total;
}

// Per-channel parameters in opmath: mean, invstd, scale = weight * invstd, bias.
template <typename opmath_t>
struct ChannelParams {
  std::vector<opmath_t> mean, invstd, scale, bias;
  ChannelParams(const Tensor& mean_t, const Tensor& var_t, const Tensor& weight, const Tensor& bias_t, double eps) {
    const auto to = [](const Tensor& t) {
      Tensor c = t.to(at::kDouble).contiguous();
      return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
    };
    const auto m = to(mean_t), v = to(var_t), w = to(weight), b = to(bias_t);
    const size_t C = m.size();
    mean.resize(C), invstd.resize(C), scale.resize(C), bias.resize(C);
    for (size_t c = 0; c < C; ++c) {
      mean[c] = static_cast<opmath_t>(m[c]);
      invstd[c] = static_cast<opmath_t>(1.0 / std::sqrt(v[c] + eps));
      scale[c] = static_cast<opmath_t>(w[c]) * invstd[c];
      bias[c] = static_cast<opmath_t>(b[c]);
    }
  }
};

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// Batch mean and biased variance per channel, into mean_out / var_out (double).
template <typename scalar_t>
void batch_stats(const Layout& L, std::vector<double>& mean_out, std::vector<double>& var_out) {
  const scalar_t* x = L.t.data_ptr<scalar_t>();
  const int64_t N = L.N, C = L.C, S = L.S, R = N * S;
  mean_out.assign(C, 0.0);
  var_out.assign(C, 0.0);
  if (!L.channels_fast) {
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double n = 0, mean = 0, m2 = 0;
        for (int64_t i = 0; i < N; ++i) {
          const scalar_t* run = x + (i * C + c) * S;
          const double run_mean = run_sum<false>(run, S, at::opmath_type<scalar_t>(0)) / S;
          const double run_m2 = run_sum<true>(run, S, static_cast<at::opmath_type<scalar_t>>(run_mean));
          welford_merge<double>(n, mean, m2, double(S), run_mean, run_m2);
        }
        mean_out[c] = mean;
        var_out[c] = m2 / n;
      }
    });
    return;
  }
  const int64_t blocks = std::min(kRowBlocks, R);
  std::vector<double> block_mean(blocks * C, 0.0), block_m2(blocks * C, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * R / blocks, r1 = (b + 1) * R / blocks;
      double* mean = &block_mean[b * C];
      double* m2 = &block_m2[b * C];
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < C; ++c) mean[c] += static_cast<double>(x[r * C + c]);
      for (int64_t c = 0; c < C; ++c) mean[c] /= double(r1 - r0);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const double d = static_cast<double>(x[r * C + c]) - mean[c];
          m2[c] += d * d;
        }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double n = 0, mean = 0, m2 = 0;
    for (int64_t b = 0; b < blocks; ++b)
      welford_merge<double>(n, mean, m2, double((b + 1) * R / blocks - b * R / blocks), block_mean[b * C + c],
                            block_m2[b * C + c]);
    mean_out[c] = mean;
    var_out[c] = m2 / n;
  }
}

template <typename scalar_t, int act>
void apply(const Layout& L, const ChannelParams<at::opmath_type<scalar_t>>& p, Tensor& y_t, double slope_d) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x = L.t.data_ptr<scalar_t>();
  scalar_t* __restrict__ y = y_t.data_ptr<scalar_t>();
  const int64_t C = L.C, S = L.S, rows = L.channels_fast ? L.N * L.S : L.N * L.C;
  const opmath_t slope = static_cast<opmath_t>(slope_d);
  // slope and the pointers are captured by value: a reference could alias y, which would
  // force a reload per element and stop the loops from vectorizing.
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(L.channels_fast ? C : S, 1)),
                   [&, slope, x, y](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (L.channels_fast) {
        for (int64_t c = 0; c < C; ++c) {
          const opmath_t z = pre_activation<opmath_t>(x[r * C + c], p.mean[c], p.scale[c], p.bias[c]);
          y[r * C + c] = static_cast<scalar_t>(activation(z, slope, act));
        }
      } else {
        const int64_t c = r % C;
        const opmath_t mean = p.mean[c], scale = p.scale[c], bias = p.bias[c];
        for (int64_t s = 0; s < S; ++s) {
          const opmath_t z = pre_activation<opmath_t>(x[r * S + s], mean, scale, bias);
          y[r * S + s] = static_cast<scalar_t>(activation(z, slope, act));
        }
      }
    }
  });
}

at::ScalarType stats_dtype(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<Tensor, Tensor, Tensor> bn_act_forward_cpu(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                                                      const std::optional<Tensor>& mean_in,
                                                      const std::optional<Tensor>& var_in, bool training, double eps,
                                                      int64_t act, double slope) {
  TORCH_CHECK(x_in.dim() >= 2, "fusedgan::bn_act_forward: input must be (N, C, *), got ", x_in.dim(), "D");
  TORCH_CHECK(training || (mean_in.has_value() && var_in.has_value()),
              "fusedgan::bn_act_forward: running mean and var are required when not training");
  const Layout L = layout_of(x_in);
  Tensor y = at::empty_like(L.t);
  const auto stats_options = x_in.options().dtype(stats_dtype(x_in));
  Tensor mean, var;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "bn_act_forward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    if (training) {
      std::vector<double> m, v;
      if (L.N * L.S > 0) batch_stats<scalar_t>(L, m, v);
      else m.assign(L.C, 0.0), v.assign(L.C, 0.0);
      mean = at::tensor(m, at::kDouble).to(stats_options);
      var = at::tensor(v, at::kDouble).to(stats_options);
    } else {
      mean = mean_in->to(stats_options, /*non_blocking=*/false, /*copy=*/true);
      var = var_in->to(stats_options, /*non_blocking=*/false, /*copy=*/true);
    }
    const ChannelParams<opmath_t> params(mean, var, weight, bias, eps);
    with_activation(act, [&](auto a) { apply<scalar_t, decltype(a)::value>(L, params, y, slope); });
  });
  return {y, mean, var};
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

// Per-channel sums of dz and dz * (x - mean), in double.
template <typename scalar_t, int act>
void grad_sums(const Layout& L, const Tensor& dy_t, const ChannelParams<at::opmath_type<scalar_t>>& p,
               at::opmath_type<scalar_t> slope, std::vector<double>& sum_dz, std::vector<double>& sum_dz_xmu) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x = L.t.data_ptr<scalar_t>();
  const scalar_t* dy = dy_t.data_ptr<scalar_t>();
  const int64_t N = L.N, C = L.C, S = L.S, R = N * S;
  sum_dz.assign(C, 0.0);
  sum_dz_xmu.assign(C, 0.0);
  if (!L.channels_fast) {
    at::parallel_for(0, C, 1, [&, slope, x, dy](int64_t c0, int64_t c1) {
      opmath_t dz_buf[kChunk], dzx_buf[kChunk];
      for (int64_t c = c0; c < c1; ++c) {
        const opmath_t mean = p.mean[c], scale = p.scale[c], bias = p.bias[c];
        for (int64_t i = 0; i < N; ++i) {
          const int64_t base = (i * C + c) * S;
          for (int64_t s0 = 0; s0 < S; s0 += kChunk) {
            const int64_t len = std::min(kChunk, S - s0);
            for (int64_t s = 0; s < len; ++s) {
              const opmath_t xv = x[base + s0 + s];
              const opmath_t dz = activation_grad<opmath_t>(dy[base + s0 + s],
                                                            pre_activation(xv, mean, scale, bias), slope, act);
              dz_buf[s] = dz;
              dzx_buf[s] = dz * (xv - mean);
            }
            sum_dz[c] += run_sum<false>(dz_buf, len, opmath_t(0));
            sum_dz_xmu[c] += run_sum<false>(dzx_buf, len, opmath_t(0));
          }
        }
      }
    });
    return;
  }
  const int64_t blocks = std::min(kRowBlocks, R);
  std::vector<double> block_dz(blocks * C, 0.0), block_dzx(blocks * C, 0.0);
  at::parallel_for(0, blocks, 1, [&, slope, x, dy](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* acc_dz = &block_dz[b * C];
      double* acc_dzx = &block_dzx[b * C];
      for (int64_t r = b * R / blocks; r < (b + 1) * R / blocks; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const opmath_t xv = x[r * C + c];
          const opmath_t dz =
              activation_grad<opmath_t>(dy[r * C + c], pre_activation(xv, p.mean[c], p.scale[c], p.bias[c]), slope, act);
          acc_dz[c] += dz;
          acc_dzx[c] += static_cast<double>(dz * (xv - p.mean[c]));
        }
    }
  });
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < C; ++c) {
      sum_dz[c] += block_dz[b * C + c];
      sum_dz_xmu[c] += block_dzx[b * C + c];
    }
}

std::tuple<Tensor, Tensor, Tensor> bn_act_backward_cpu(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight,
                                                       const Tensor& bias, const Tensor& mean, const Tensor& var,
                                                       bool training, double eps, int64_t act, double slope_d) {
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), "fusedgan::bn_act_backward: grad and input shapes differ");
  const Layout L = layout_of(x_in);
  const Tensor dy_t = in_layout(dy_in.to(x_in.scalar_type()), L);
  Tensor dx = at::empty_like(L.t);
  const int64_t C = L.C, S = L.S, count = L.N * L.S;
  std::vector<double> sum_dz, sum_dz_xmu;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "bn_act_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const ChannelParams<opmath_t> p(mean, var, weight, bias, eps);
    const opmath_t slope = static_cast<opmath_t>(slope_d);
    with_activation(act, [&](auto a) {
      constexpr int A = decltype(a)::value;
      grad_sums<scalar_t, A>(L, dy_t, p, slope, sum_dz, sum_dz_xmu);
      // dweight = sum dz * xhat = invstd * sum dz * (x - mean); dbias = sum dz.
      std::vector<opmath_t> mean_dz(C), mean_dz_xhat(C);
      for (int64_t c = 0; c < C; ++c) {
        sum_dz_xmu[c] *= p.invstd[c];
        mean_dz[c] = static_cast<opmath_t>(count ? sum_dz[c] / count : 0.0);
        mean_dz_xhat[c] = static_cast<opmath_t>(count ? sum_dz_xmu[c] / count : 0.0);
      }
      const scalar_t* x = L.t.data_ptr<scalar_t>();
      const scalar_t* dy = dy_t.data_ptr<scalar_t>();
      scalar_t* __restrict__ out = dx.data_ptr<scalar_t>();
      const int64_t rows = L.channels_fast ? count : L.N * C;
      at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(L.channels_fast ? C : S, 1)),
                       [&, slope, x, dy, out](int64_t r0, int64_t r1) {
        const auto dx_of = [&, slope](opmath_t xv, opmath_t dyv, int64_t c) {
          const opmath_t dz = activation_grad<opmath_t>(dyv, pre_activation(xv, p.mean[c], p.scale[c], p.bias[c]),
                                                        slope, A);
          return static_cast<scalar_t>(
              grad_input(dz, (xv - p.mean[c]) * p.invstd[c], p.scale[c], mean_dz[c], mean_dz_xhat[c], training));
        };
        for (int64_t r = r0; r < r1; ++r) {
          if (L.channels_fast) {
            for (int64_t c = 0; c < C; ++c) out[r * C + c] = dx_of(x[r * C + c], dy[r * C + c], c);
          } else {
            const int64_t c = r % C;  // constant along the run: hoisted, so the loop vectorizes
            for (int64_t s = 0; s < S; ++s) out[r * S + s] = dx_of(x[r * S + s], dy[r * S + s], c);
          }
        }
      });
    });
  });
  const auto as_param = [&](const std::vector<double>& v) { return at::tensor(v, at::kDouble).to(weight.options()); };
  return {dx, as_param(sum_dz_xmu), as_param(sum_dz)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedgan, CPU, m) {
  m.impl("bn_act_forward", &bn_act_forward_cpu);
  m.impl("bn_act_backward", &bn_act_backward_cpu);
}

}  // namespace fusedgan
