// The backend op schemas (csrc/fusedgan_ops.cpp), defined in each op namespace that has
// backend kernels.
#pragma once

#include <torch/library.h>

namespace fusedgan {

void define_backend_ops(torch::Library& m);

}  // namespace fusedgan
