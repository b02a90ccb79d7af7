// Conv2d + bias + LeakyReLU for the "cuda-sim" backend: the CUDA kernels and launchers of
// csrc/cuda/ compiled for the CPU against the SIMT emulation (csrc/simt/simt.h), registered
// as fusedgan_sim ops on CPU tensors.
#include "fp_contract_off.h"  // first: it applies to every function after it
#include <torch/library.h>

#define FUSEDGAN_SIMT 1
#include "../cuda/conv_leaky_relu_launch.h"

namespace fusedgan {

TORCH_LIBRARY_IMPL(fusedgan_sim, CPU, m) {
  m.impl("conv_leaky_relu_forward", &conv_leaky_relu_forward_cuda);
  m.impl("leaky_relu_grad_bias", &leaky_relu_grad_bias_cuda);
}

}  // namespace fusedgan
