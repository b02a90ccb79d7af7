// The op namespace of the emulated CUDA backend ("cuda-sim"): the backend ops, whose CPU
// kernels are the CUDA kernels run by csrc/simt/ (batch_norm_act.cpp, conv_leaky_relu.cpp),
// and launch_log, which tells tests which kernels (so which paths) their shapes reached.
#include <torch/library.h>

#include <string>
#include <vector>

#include "../op_schemas.h"
#include "simt.h"

TORCH_LIBRARY(fusedgan_sim, m) {
  fusedgan::define_backend_ops(m);
  // The kernels launched since the last call, as "name<template arguments> grid (x, y, z)";
  // records from now on while `record` is true.
  m.def("launch_log(bool record) -> str[]",
        [](bool record) { return fusedgan::simt::launch_log(record); });
}
