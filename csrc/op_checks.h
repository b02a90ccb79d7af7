// Argument checks shared across ops: the user-facing checks of the eager entry ops
// (csrc/autograd/), with the messages fusedgan/functional.py gives for the same mistakes,
// and the checks the CPU and CUDA kernels of an op share (these guard direct calls of
// torch.ops.fusedgan.*).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <sstream>
#include <string>

namespace fusedgan {

// A dtype as Python prints it: torch.float32.
inline std::string dtype_name(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

// Sizes as a Python tuple: (3,) or (2, 3, 4).
inline std::string tuple_str(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

inline void check_input(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() >= 2, "input must have shape (N, C, *) with at least 2 dimensions, got ",
                    input.dim(), "D input of shape ", tuple_str(input.sizes()));
  const auto t = input.scalar_type();
  TORCH_CHECK_TYPE(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble,
                   "input must be float16, bfloat16, float32 or float64, got ", dtype_name(input.scalar_type()));
}

// A per-channel (C,) tensor on input's device, in input's dtype or (fp16/bf16 input) fp32.
inline void check_channel_tensor(const std::optional<at::Tensor>& tensor, const char* name, const at::Tensor& input) {
  if (!tensor) return;
  const int64_t C = input.size(1);
  TORCH_CHECK_VALUE(tensor->dim() == 1 && tensor->size(0) == C, name, " must have shape (", C,
                    ",), one value per channel of input ", tuple_str(input.sizes()), ", got ",
                    tuple_str(tensor->sizes()));
  TORCH_CHECK_VALUE(tensor->device() == input.device(), name, " is on ", tensor->device(), " but input is on ",
                    input.device(), "; move both to one device");
  const auto t = tensor->scalar_type(), x = input.scalar_type();
  const bool low = x == at::kHalf || x == at::kBFloat16;
  TORCH_CHECK_TYPE(t == x || (low && t == at::kFloat), name, " must have dtype ", dtype_name(x),
                   low ? " or torch.float32" : "", " for a ", dtype_name(x), " input, got ", dtype_name(t));
}

inline void check_scalar(double value, const char* name, std::optional<double> minimum = std::nullopt) {
  TORCH_CHECK_VALUE(std::isfinite(value), name, " must be a finite number, got ", value);
  TORCH_CHECK_VALUE(!minimum || value >= *minimum, name, " must be >= ", *minimum, ", got ", value);
}

inline void check_bn_act_forward(const at::Tensor& x, bool training, const std::optional<at::Tensor>& mean,
                                 const std::optional<at::Tensor>& var) {
  TORCH_CHECK(x.dim() >= 2, "fusedgan::bn_act_forward: input must be (N, C, *), got ", x.dim(), "D");
  TORCH_CHECK(training || (mean.has_value() && var.has_value()),
              "fusedgan::bn_act_forward: running mean and var are required when not training");
}

inline void check_bn_act_backward(const at::Tensor& dy, const at::Tensor& x) {
  TORCH_CHECK(dy.sizes() == x.sizes(), "fusedgan::bn_act_backward: grad and input shapes differ");
}

inline void check_gn_act(const at::Tensor& x, int64_t groups) {
  TORCH_CHECK(x.dim() >= 2, "fusedgan::gn_act: input must be (N, C, *), got ", x.dim(), "D");
  TORCH_CHECK(groups >= 1 && x.size(1) % groups == 0, "fusedgan::gn_act: groups (", groups,
              ") must divide the channels (", x.size(1), ")");
}

}  // namespace fusedgan
