// Conv2d + bias + LeakyReLU on CUDA tensors: the kernels after the convolution
// (conv_leaky_relu_kernels.cuh) and their launchers (conv_leaky_relu_launch.h), registered
// for the CUDA dispatch key. The same headers build the emulated backend
// (csrc/simt/conv_leaky_relu.cpp).
#include <torch/library.h>

#include "conv_leaky_relu_launch.h"

namespace fusedgan {

TORCH_LIBRARY_IMPL(fusedgan, CUDA, m) {
  m.impl("conv_leaky_relu_forward", &conv_leaky_relu_forward_cuda);
  m.impl("leaky_relu_grad_bias", &leaky_relu_grad_bias_cuda);
}

}  // namespace fusedgan
