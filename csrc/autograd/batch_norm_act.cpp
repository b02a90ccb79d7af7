// fusedgan::batch_norm_act, the eager entry of BatchNorm + activation on the C++ backends:
// argument checks, the fused forward, the running-statistics update and the backward in
// one dispatcher call. Stock BatchNorm + ReLU cost two calls; a Python autograd.Function
// alone costs more than both on small tensors, where a GAN step is launch-bound. So the
// modules and fusedgan.functional call this op in eager mode on the "cpu" and "cuda"
// backends (torch.compile traces the Python path instead; it removes that cost anyway).
//
// Registered for the Autograd key (and for the keys below it, for inference mode): the
// backward is a C++ autograd node. Under create_graph (gradient penalties) the node
// computes its gradients with differentiable ATen ops instead of the fused kernel, so
// second-order gradients are stock's.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../kernel_math.h"
#include "../op_checks.h"
#include "../outputs.h"
#include "entry_ops.h"
#include "op_handle.h"

namespace fusedgan {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardOp = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                     const std::optional<Tensor>&, const std::optional<Tensor>&, bool,
                                                     double, int64_t, double);
using BackwardOp = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                      const Tensor&, const Tensor&, bool, double, int64_t, double);

// (dx, dweight, dbias) written with differentiable ATen ops: the reference formula, with the
// batch statistics recomputed from x when training so that their dependence on x is part
// of the graph. The activation's masks go through threshold_backward / leaky_relu_backward,
// whose derivative with respect to the mask's input is zero, as in stock's graph.
std::tuple<Tensor, Tensor, Tensor> differentiable_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                                           const Tensor& bias, const Tensor& mean, const Tensor& var,
                                                           bool training, double eps, int64_t act, double slope) {
  const auto acc = acc_dtype(x);
  std::vector<int64_t> dims{0}, shape(x.dim(), 1);
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  shape[1] = -1;
  const Tensor xf = x.to(acc);
  Tensor m = mean.to(acc).view(shape), v = var.to(acc).view(shape);
  if (training) {
    m = xf.mean(dims, /*keepdim=*/true);
    v = (xf - m).square().mean(dims, /*keepdim=*/true);
  }
  const Tensor invstd = (v + eps).rsqrt();
  const Tensor xhat = (xf - m) * invstd;
  const Tensor w = weight.to(acc).view(shape);
  Tensor dz = dy.to(acc);
  if (act != kIdentity) {
    const Tensor z = xhat * w + bias.to(acc).view(shape);
    dz = act == kRelu ? at::threshold_backward(dz, z, 0) : at::leaky_relu_backward(dz, z, slope, false);
  }
  const Tensor sum_dz = dz.sum(dims), sum_dz_xhat = (dz * xhat).sum(dims);
  if (training) {
    const double count = double(x.numel() / x.size(1));
    dz = dz - (sum_dz / count).view(shape) - xhat * (sum_dz_xhat / count).view(shape);
  }
  return {(dz * w * invstd).to(x.scalar_type()), sum_dz_xhat.to(weight.scalar_type()), sum_dz.to(bias.scalar_type())};
}

// y = act(batch_norm(x)) with (y, mean, var) out, as fusedgan::bn_act_forward; saves x, the
// parameters and the statistics (never the pre-activation).
struct BatchNormAct : public torch::autograd::Function<BatchNormAct> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const Tensor& bias,
                               const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
                               bool training, double eps, int64_t act, double slope) {
    static const auto forward_op = find_op<ForwardOp>("fusedgan::bn_act_forward");
    auto [y, mean, var] = call_kernel(forward_op, x, weight, bias, running_mean, running_var, training, eps, act, slope);
    ctx->save_for_backward({x, weight, bias, mean, var});
    // One entry, not four: each costs a string key and a hash-map insert, a visible part of a
    // small layer's call. (act and training are exact as doubles.)
    ctx->saved_data["scalars"] = std::vector<double>{double(training), eps, double(act), slope};
    ctx->mark_non_differentiable({mean, var});
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<double> scalars = ctx->saved_data["scalars"].toDoubleVector();  // as forward packed them
    const bool training = scalars[0] != 0;
    const double eps = scalars[1], slope = scalars[3];
    const int64_t act = int64_t(scalars[2]);
    static const auto backward_op = find_op<BackwardOp>("fusedgan::bn_act_backward");
    // Under create_graph the gradients must themselves be differentiable: no fused kernel then.
    auto [dx, dweight, dbias] =
        at::GradMode::is_enabled()
            ? differentiable_backward(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], training, eps, act,
                                      slope)
            : call_kernel(backward_op, grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], training, eps, act,
                          slope);
    return {ctx->needs_input_grad(0) ? dx : Tensor(), ctx->needs_input_grad(1) ? dweight : Tensor(),
            ctx->needs_input_grad(2) ? dbias : Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// As stock: running = (1 - momentum) * running + momentum * batch, with the unbiased
// variance; momentum None is the cumulative average 1 / num_batches_tracked. On CPU the
// update is written straight into the buffers (on a small layer each tensor op would
// cost more than the whole update), bumping their version counters as in-place ops do.
// Elsewhere it stays tensor ops (no value is read back to the host).
void update_running_stats(const Tensor& running_mean, const Tensor& running_var,
                          const std::optional<Tensor>& num_batches_tracked, const Tensor& mean, const Tensor& var,
                          int64_t count, std::optional<double> momentum) {
  at::NoGradGuard no_grad;
  const double bessel = double(count) / double(count - 1);
  const bool direct = running_mean.is_cpu() && running_var.is_cpu() && mean.is_cpu() &&
                      (momentum || num_batches_tracked->scalar_type() == at::kLong);
  if (direct) {
    const double m = momentum ? *momentum : 1.0 / double(*num_batches_tracked->const_data_ptr<int64_t>());
    int i = 0;
    for (const auto& [running, batch] : {std::pair{running_mean, mean}, std::pair{running_var, var}}) {
      const double scale = i++ == 0 ? 1.0 : bessel;  // the batch variance is biased
      AT_DISPATCH_FLOATING_TYPES(batch.scalar_type(), "update_running_stats", [&] {
        using batch_t = scalar_t;
        const batch_t* b = batch.const_data_ptr<batch_t>();
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running.scalar_type(), "update_running_stats", [&] {
          scalar_t* r = running.data_ptr<scalar_t>();
          // The strides read once: stride() is an out-of-line call, once per value otherwise.
          const int64_t C = running.numel(), r_stride = running.stride(0), b_stride = batch.stride(0);
          for (int64_t c = 0; c < C; ++c) {
            scalar_t& value = r[c * r_stride];
            value = static_cast<scalar_t>((1.0 - m) * double(value) + m * double(b[c * b_stride]) * scale);
          }
        });
      });
      torch::autograd::impl::bump_version(running);
    }
    return;
  }
  const Tensor factor = momentum ? Tensor() : num_batches_tracked->to(mean.scalar_type()).reciprocal();
  for (const auto& [running, batch] : {std::pair{running_mean, mean}, std::pair{running_var, var * bessel}}) {
    // lerp: running + momentum * (batch - running), stock's update up to rounding.
    if (running.scalar_type() == batch.scalar_type()) {
      momentum ? running.lerp_(batch, *momentum) : running.lerp_(batch, factor);
    } else {
      const Tensor wide = running.to(batch.scalar_type());
      running.copy_(momentum ? at::lerp(wide, batch, *momentum) : at::lerp(wide, batch, factor));
    }
  }
}

// num_batches_tracked += 1 (directly for a CPU int64 counter, as above).
void count_batch(const Tensor& num_batches_tracked) {
  if (num_batches_tracked.is_cpu() && num_batches_tracked.scalar_type() == at::kLong) {
    ++*num_batches_tracked.data_ptr<int64_t>();
    torch::autograd::impl::bump_version(num_batches_tracked);
  } else {
    at::NoGradGuard no_grad;
    num_batches_tracked.add_(1);
  }
}

}  // namespace

Tensor batch_norm_act(const Tensor& input, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                      const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
                      const std::optional<Tensor>& num_batches_tracked, bool training, std::optional<double> momentum,
                      double eps, int64_t act, double slope) {
  check_input(input);
  check_channel_tensor(running_mean, "running_mean", input);
  check_channel_tensor(running_var, "running_var", input);
  check_channel_tensor(weight, "weight", input);
  check_channel_tensor(bias, "bias", input);
  TORCH_CHECK_VALUE(running_mean.has_value() == running_var.has_value(),
                    "running_mean and running_var must be given together (or both None)");
  TORCH_CHECK_VALUE(training || running_mean.has_value(),
                    "running_mean and running_var are required when training=False");
  TORCH_CHECK_VALUE(act == kIdentity || act == kRelu || act == kLeakyRelu, "activation code must be 0, 1 or 2, got ",
                    act);
  check_scalar(eps, "eps", 0.0);
  check_scalar(slope, "negative_slope");
  const bool update = training && running_mean.has_value();
  TORCH_CHECK_VALUE(!update || momentum.has_value() || num_batches_tracked.has_value(),
                    "momentum must be a finite number, got None (None, the cumulative average, needs "
                    "num_batches_tracked)");
  if (momentum) check_scalar(*momentum, "momentum");

  const int64_t C = input.size(1), count = C ? input.numel() / C : 0;
  TORCH_CHECK_VALUE(!(training && count == 1), "Expected more than 1 value per channel when training, got input size ",
                    input.sizes());
  const auto param_options = input.options().dtype(running_mean ? running_mean->scalar_type() : input.scalar_type());
  const Tensor w = weight ? *weight : at::ones({C}, param_options);
  const Tensor b = bias ? *bias : at::zeros({C}, w.options());
  TORCH_CHECK_TYPE(w.scalar_type() == b.scalar_type(), "weight and bias must have one dtype, got ",
                   dtype_name(w.scalar_type()), " and ", dtype_name(b.scalar_type()));

  if (training && num_batches_tracked) count_batch(*num_batches_tracked);
  const auto outputs = BatchNormAct::apply(input, w, b, training ? std::nullopt : running_mean,
                                           training ? std::nullopt : running_var, training, eps, act, slope);
  if (update && count > 0)
    update_running_stats(*running_mean, *running_var, num_batches_tracked, outputs[1], outputs[2], count, momentum);
  return outputs[0];
}

TORCH_LIBRARY_IMPL(fusedgan, Autograd, m) { m.impl("batch_norm_act", &batch_norm_act); }
// Below autograd (inference mode), the same function: it records no graph there.
TORCH_LIBRARY_IMPL(fusedgan, CompositeExplicitAutograd, m) { m.impl("batch_norm_act", &batch_norm_act); }

}  // namespace fusedgan
