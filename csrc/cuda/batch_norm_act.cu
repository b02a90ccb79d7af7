// BatchNorm + activation on CUDA tensors: the kernels (batch_norm_act_kernels.cuh) and their
// launchers (batch_norm_act_launch.h), registered for the CUDA dispatch key. The same
// headers build the emulated backend (csrc/simt/batch_norm_act.cpp).
#include <torch/library.h>

#include "batch_norm_act_launch.h"

namespace fusedgan {

TORCH_LIBRARY_IMPL(fusedgan, CUDA, m) {
  m.impl("bn_act_forward", &bn_act_forward_cuda);
  m.impl("bn_act_backward", &bn_act_backward_cuda);
}

}  // namespace fusedgan
