// GroupNorm / InstanceNorm + activation on CUDA tensors: the kernels
// (group_norm_act_kernels.cuh) and their launchers (group_norm_act_launch.h), registered for
// the CUDA dispatch key. The same headers build the emulated backend
// (csrc/simt/group_norm_act.cpp).
#include <torch/library.h>

#include "group_norm_act_launch.h"

namespace fusedgan {

TORCH_LIBRARY_IMPL(fusedgan, CUDA, m) {
  m.impl("gn_act_forward", &gn_act_forward_cuda);
  m.impl("gn_act_backward", &gn_act_backward_cuda);
}

}  // namespace fusedgan
