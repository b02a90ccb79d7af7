// fusedgan::conv2d_leaky_relu, the eager entry of Conv2d + LeakyReLU on the C++ backends:
// argument checks, the fused forward and the backward in one dispatcher call, for the same
// reason as batch_norm_act.cpp (a Python autograd.Function costs more than the stock pair
// on small tensors). Registered for the Autograd key and below it.
//
// Saves the input, the weight and the output (never the pre-activation): for slope >= 0 the
// activation's mask is y > 0. Backward: the fused dy -> dz step with dbias, then torch's
// convolution backward. Under create_graph the dz step is aten's leaky_relu_backward, which
// is differentiable (with a zero derivative through its mask, as in stock's graph).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "../op_checks.h"
#include "entry_ops.h"
#include "op_handle.h"

namespace fusedgan {
namespace {

using at::IntArrayRef;
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardOp = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, IntArrayRef, IntArrayRef,
                         IntArrayRef, int64_t, double);
using GradBiasOp = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, double, bool);

struct ConvLeakyRelu : public torch::autograd::Function<ConvLeakyRelu> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                               const std::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                               IntArrayRef dilation, int64_t groups, double slope) {
    static const auto forward_op = find_op<ForwardOp>("fusedgan::conv_leaky_relu_forward");
    Tensor y = call_kernel(forward_op, x, weight, bias, stride, padding, dilation, groups, slope);
    ctx->save_for_backward({x, weight, y});
    // Two entries, not six: each costs a string key and a hash-map insert, a visible part of
    // a small layer's call.
    ctx->saved_data["conv"] = std::vector<int64_t>{stride[0],   stride[1], padding[0], padding[1], dilation[0],
                                                   dilation[1], groups,    bias.has_value()};
    ctx->saved_data["slope"] = slope;
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &y = saved[2];
    const double slope = ctx->saved_data["slope"].toDouble();
    const std::vector<int64_t> conv = ctx->saved_data["conv"].toIntVector();  // as forward packed it
    const IntArrayRef stride(&conv[0], 2), padding(&conv[2], 2), dilation(&conv[4], 2);
    const int64_t groups = conv[6];
    const bool need_bias = conv[7] && ctx->needs_input_grad(2);
    Tensor dz, dbias;
    if (at::GradMode::is_enabled()) {  // create_graph: stay differentiable
      dz = at::leaky_relu_backward(grads[0], y, slope, /*self_is_result=*/true);
      if (need_bias) dbias = dz.sum({0, 2, 3});
    } else {
      static const auto grad_bias_op = find_op<GradBiasOp>("fusedgan::leaky_relu_grad_bias");
      std::tie(dz, dbias) = call_kernel(grad_bias_op, grads[0], y, slope, need_bias);
    }
    auto [dx, dweight, unused] =
        at::convolution_backward(dz, x, weight, std::nullopt, stride, padding, dilation, false, {0, 0}, groups,
                                 {ctx->needs_input_grad(0), ctx->needs_input_grad(1), false});
    return {dx, dweight, need_bias ? dbias.to(weight.scalar_type()) : Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor()};
  }
};

// The checks of fusedgan.functional.conv2d_leaky_relu, with its messages.
void check_conv_arguments(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                          IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                          double slope) {
  check_input(input);
  TORCH_CHECK_VALUE(input.dim() == 4, "input must have shape (N, C, H, W), got ", input.dim(), "D input of shape ",
                    tuple_str(input.sizes()));
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight must be a 4D tensor (C_out, C_in / groups, kH, kW), got ",
                    tuple_str(weight.sizes()));
  const int64_t C = input.size(1), C_out = weight.size(0);
  TORCH_CHECK_VALUE(groups >= 1 && C % groups == 0 && C_out % groups == 0,
                    "groups must be a positive int dividing the input channels (", C, ") and the output channels (",
                    C_out, "), got ", groups);
  TORCH_CHECK_VALUE(weight.size(1) * groups == C, "weight expects ", weight.size(1) * groups,
                    " input channels (weight ", tuple_str(weight.sizes()), ", groups=", groups, ") but input has ", C,
                    " channels");
  for (const auto& [tensor, name] : {std::pair<const Tensor*, const char*>{&weight, "weight"},
                                     std::pair<const Tensor*, const char*>{bias ? &*bias : nullptr, "bias"}}) {
    if (!tensor) continue;
    TORCH_CHECK_VALUE(tensor->device() == input.device(), name, " is on ", tensor->device(), " but input is on ",
                      input.device(), "; move both to one device");
    TORCH_CHECK_TYPE(tensor->scalar_type() == input.scalar_type(), name, " must have the input's dtype ",
                     dtype_name(input.scalar_type()), ", got ", dtype_name(tensor->scalar_type()));
  }
  TORCH_CHECK_VALUE(!bias || (bias->dim() == 1 && bias->size(0) == C_out), "bias must have shape (", C_out,
                    ",), got ", tuple_str(bias ? bias->sizes() : IntArrayRef{}));
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "stride, padding and dilation must be pairs of ints");
  TORCH_CHECK_VALUE(std::min(stride[0], stride[1]) >= 1 && std::min(dilation[0], dilation[1]) >= 1 &&
                        std::min(padding[0], padding[1]) >= 0,
                    "stride and dilation must be >= 1 and padding >= 0, got stride=", tuple_str(stride),
                    ", padding=", tuple_str(padding), ", dilation=", tuple_str(dilation));
  for (int64_t axis = 0; axis < 2; ++axis) {
    const int64_t size = input.size(axis + 2), padded = size + 2 * padding[axis];
    TORCH_CHECK_VALUE(dilation[axis] * (weight.size(axis + 2) - 1) + 1 <= padded, "kernel size ",
                      tuple_str(weight.sizes().slice(2)), " (dilation ", tuple_str(dilation),
                      ") is larger than the padded input (", input.size(2) + 2 * padding[0], ", ",
                      input.size(3) + 2 * padding[1], ") along dim ", axis + 2);
  }
  check_scalar(slope, "negative_slope", 0.0);
}

}  // namespace

Tensor conv2d_leaky_relu(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                         IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups, double slope) {
  check_conv_arguments(input, weight, bias, stride, padding, dilation, groups, slope);
  return ConvLeakyRelu::apply(input, weight, bias, stride, padding, dilation, groups, slope)[0];
}

TORCH_LIBRARY_IMPL(fusedgan, Autograd, m) { m.impl("conv2d_leaky_relu", &conv2d_leaky_relu); }
// Below autograd (inference mode), the same function: it records no graph there.
TORCH_LIBRARY_IMPL(fusedgan, CompositeExplicitAutograd, m) { m.impl("conv2d_leaky_relu", &conv2d_leaky_relu); }

}  // namespace fusedgan
