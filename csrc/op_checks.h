// Argument checks the CPU and CUDA kernels of an op share (the Python layer has already
// checked users' arguments; these guard direct calls of torch.ops.fusedgan.*).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fusedgan {

inline void check_bn_act_forward(const at::Tensor& x, bool training, const std::optional<at::Tensor>& mean,
                                 const std::optional<at::Tensor>& var) {
  TORCH_CHECK(x.dim() >= 2, "fusedgan::bn_act_forward: input must be (N, C, *), got ", x.dim(), "D");
  TORCH_CHECK(training || (mean.has_value() && var.has_value()),
              "fusedgan::bn_act_forward: running mean and var are required when not training");
}

inline void check_bn_act_backward(const at::Tensor& dy, const at::Tensor& x) {
  TORCH_CHECK(dy.sizes() == x.sizes(), "fusedgan::bn_act_backward: grad and input shapes differ");
}

}  // namespace fusedgan
