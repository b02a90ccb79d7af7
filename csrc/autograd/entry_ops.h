// The eager entry ops (batch_norm_act.cpp, conv_leaky_relu.cpp): registered as
// fusedgan::batch_norm_act / fusedgan::conv2d_leaky_relu, and bound as plain Python
// functions of fusedgan._C (csrc/python_entries.cpp) for the calls that need no dispatcher.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fusedgan {

at::Tensor batch_norm_act(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
                          const std::optional<at::Tensor>& running_var,
                          const std::optional<at::Tensor>& num_batches_tracked, bool training,
                          std::optional<double> momentum, double eps, int64_t act, double slope);

at::Tensor conv2d_leaky_relu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             double slope);

}  // namespace fusedgan
