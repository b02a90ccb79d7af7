// GroupNorm / InstanceNorm + activation for the "cuda-sim" backend: the CUDA kernels and
// launchers of csrc/cuda/ compiled for the CPU against the SIMT emulation
// (csrc/simt/simt.h), registered as fusedgan_sim ops on CPU tensors.
#include "fp_contract_off.h"  // first: it applies to every function after it
#include <torch/library.h>

#define FUSEDGAN_SIMT 1
#include "../cuda/group_norm_act_launch.h"

namespace fusedgan {

TORCH_LIBRARY_IMPL(fusedgan_sim, CPU, m) {
  m.impl("gn_act_forward", &gn_act_forward_cuda);
  m.impl("gn_act_backward", &gn_act_backward_cuda);
}

}  // namespace fusedgan
