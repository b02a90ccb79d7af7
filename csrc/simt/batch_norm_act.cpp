// BatchNorm + activation for the "cuda-sim" backend: the CUDA kernels and launchers of
// csrc/cuda/ compiled for the CPU against the SIMT emulation (csrc/simt/simt.h), registered
// as fusedgan_sim ops on CPU tensors.
#include "fp_contract_off.h"  // first: it applies to every function after it
#include <torch/library.h>

#define FUSEDGAN_SIMT 1
#include "../cuda/batch_norm_act_launch.h"

namespace fusedgan {

TORCH_LIBRARY_IMPL(fusedgan_sim, CPU, m) {
  m.impl("bn_act_forward", &bn_act_forward_cuda);
  m.impl("bn_act_backward", &bn_act_backward_cuda);
}

}  // namespace fusedgan
