// A typed handle to one of fusedgan's backend ops: the entry ops call the backend kernels
// through the dispatcher, which picks the CPU or CUDA one by device. Keep the handle in a
// function-local static (the lookup is by name, once).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace fusedgan {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace fusedgan
