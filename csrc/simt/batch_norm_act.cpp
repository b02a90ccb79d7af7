// BatchNorm + activation for the "cuda-sim" backend: the CUDA kernels and launchers of
// csrc/cuda/ compiled for the CPU against the SIMT emulation (csrc/simt/simt.h), registered
// as fusedgan_sim ops on CPU tensors.
// Every function of this file, torch's inline ones included, keeps a * b + c as two
// roundings wherever the source writes it so: GCC would otherwise fuse some into FMAs as it
// sees fit per instantiation, and the int32- and int64-offset kernels would differ in bits.
#pragma GCC optimize("fp-contract=off")
#include <torch/library.h>

#define FUSEDGAN_SIMT 1
#include "../cuda/batch_norm_act_launch.h"

namespace fusedgan {

TORCH_LIBRARY_IMPL(fusedgan_sim, CPU, m) {
  m.impl("bn_act_forward", &bn_act_forward_cuda);
  m.impl("bn_act_backward", &bn_act_backward_cuda);
}

}  // namespace fusedgan
