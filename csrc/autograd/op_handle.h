// A typed handle to one of fusedgan's backend ops: the entry ops call the backend kernels
// through the dispatcher, which picks the CPU or CUDA one by device. Keep the handle in a
// function-local static (the lookup is by name, once).
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <utility>

namespace fusedgan {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// op(args...) below the autograd keys: called from an entry op's autograd node, whose own
// backward is the gradient, so the op's Autograd key has nothing to do (it would run the
// boxed not-implemented fallback, boxing every argument: a visible part of a small call).
template <typename Signature, typename... Args>
auto call_kernel(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(std::forward<Args>(args)...);
}

}  // namespace fusedgan
