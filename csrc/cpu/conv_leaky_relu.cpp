// Conv2d + bias + LeakyReLU, C++ CPU kernels: torch's convolution (oneDNN) without bias,
// then one in-place pass for bias + activation; backward's dy -> dz step with dbias fused.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../kernel_math.h"
#include "helpers.h"
#include "layout.h"

namespace fusedgan {
namespace {

Tensor conv_leaky_relu_forward_cpu(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups, double slope_d) {
  const Tensor z = at::convolution(x, weight, std::nullopt, stride, padding, dilation, false, {0, 0}, groups);
  const Layout L = layout_of(z);
  Tensor y = L.t;  // the convolution's own output, updated in place
  const std::vector<double> b = bias.has_value() ? to_vector(*bias) : std::vector<double>(L.C, 0.0);
  const double* bp = b.data();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "conv_leaky_relu_forward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    scalar_t* __restrict__ p = y.data_ptr<scalar_t>();
    const opmath_t slope = static_cast<opmath_t>(slope_d);
    const int64_t C = L.C, S = L.S, rows = L.channels_fast ? L.N * L.S : L.N * L.C, len = L.channels_fast ? C : S;
    at::parallel_for(0, rows, grain(len), [&, p, slope](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        if (L.channels_fast) {
          for (int64_t c = 0; c < C; ++c)
            p[r * C + c] = static_cast<scalar_t>(activation<opmath_t>(opmath_t(p[r * C + c]) + opmath_t(bp[c]), slope,
                                                                      kLeakyRelu));
        } else {
          const opmath_t bc = bp[r % C];
          for (int64_t s = 0; s < S; ++s)
            p[r * S + s] = static_cast<scalar_t>(activation<opmath_t>(opmath_t(p[r * S + s]) + bc, slope, kLeakyRelu));
        }
      }
    });
  });
  return y;
}

std::tuple<Tensor, Tensor> leaky_relu_grad_bias_cpu(const Tensor& dy_in, const Tensor& y_in, double slope_d,
                                                    bool has_bias) {
  TORCH_CHECK(dy_in.sizes() == y_in.sizes(), "fusedgan::leaky_relu_grad_bias: grad and output shapes differ");
  const Layout L = layout_of(y_in);
  const Tensor dy_t = in_layout(dy_in.to(y_in.scalar_type()), L);
  Tensor dz = new_output(L.t);
  const int64_t N = L.N, C = L.C, S = L.S, R = N * S;
  std::vector<double> db(C, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y_in.scalar_type(), "leaky_relu_grad_bias_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* y = L.t.data_ptr<scalar_t>();
    const scalar_t* dy = dy_t.data_ptr<scalar_t>();
    scalar_t* __restrict__ out = dz.data_ptr<scalar_t>();
    const opmath_t slope = static_cast<opmath_t>(slope_d);
    // The mask from the output: for slope >= 0, y > 0 exactly where z > 0.
    const auto grad = [slope](scalar_t dyv, scalar_t yv) {
      return activation_grad<opmath_t>(opmath_t(dyv), opmath_t(yv), slope, kLeakyRelu);
    };
    if (!L.channels_fast) {
      at::parallel_for(0, C, grain(N * S), [&, y, dy, out](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          double sum = 0;
          for (int64_t i = 0; i < N; ++i) {
            const int64_t base = (i * C + c) * S;
            opmath_t part = 0;
            for (int64_t s = 0; s < S; ++s) {
              const opmath_t d = grad(dy[base + s], y[base + s]);
              out[base + s] = static_cast<scalar_t>(d);
              part += d;
            }
            sum += part;
          }
          db[c] = sum;
        }
      });
      return;
    }
    const int64_t blocks = std::min(kRowBlocks, std::max<int64_t>(R, 1));
    std::vector<double> partial(blocks * C, 0.0);
    at::parallel_for(0, blocks, grain(R / blocks * C), [&, y, dy, out](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        double* acc = &partial[blk * C];
        for (int64_t r = blk * R / blocks; r < (blk + 1) * R / blocks; ++r)
          for (int64_t c = 0; c < C; ++c) {
            const opmath_t d = grad(dy[r * C + c], y[r * C + c]);
            out[r * C + c] = static_cast<scalar_t>(d);
            acc[c] += d;
          }
      }
    });
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t c = 0; c < C; ++c) db[c] += partial[blk * C + c];
  });
  Tensor db_t = from_vector(has_bias ? db : std::vector<double>(), y_in.options().dtype(acc_dtype(y_in)));
  return {dz, db_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedgan, CPU, m) {
  m.impl("conv_leaky_relu_forward", &conv_leaky_relu_forward_cpu);
  m.impl("leaky_relu_grad_bias", &leaky_relu_grad_bias_cpu);
}

}  // namespace fusedgan
