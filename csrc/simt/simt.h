// The CUDA execution model on the CPU: the kernels of csrc/cuda/ compiled by the host
// compiler against this header run here exactly as written for nvcc (backend "cuda-sim").
//
// What a kernel sees:
//  - threadIdx, blockIdx, blockDim, gridDim; __syncthreads(); the __shfl_*_sync family;
//    shared arrays (FUSEDGAN_SHARED); global memory through Ptr, a bounds-checked pointer.
//  - The threads of a block run concurrently as fibers on one OS thread (blocks run in
//    parallel on OpenMP threads). A fiber runs until it reaches a barrier or a shuffle, then
//    the next runnable one runs; the order in which runnable threads are taken is shuffled
//    from a seed (FUSEDGAN_SIMT_SEED), so a missing barrier or a race on shared memory
//    gives a result that is wrong or changes with the seed.
//  - Errors stop the launch with a message naming the kernel, block and thread: an access
//    outside a tensor's elements or a misaligned vector access, a barrier or shuffle some
//    threads of the block (or lanes of the mask) never reach, a kernel that returns early
//    while others wait at a barrier.
//  - Shared memory is filled with 0xFF bytes (NaN for floats) when a block starts, so a
//    read before any write shows.
//
// This header needs no CUDA and no torch; csrc/simt/runtime.h adds the launch from tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fusedgan {
namespace simt {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The running thread's coordinates (inside a kernel).
const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Stops the running block with an error; the launch then throws std::runtime_error(what + where).
[[noreturn]] void fail(const std::string& what);

// __syncthreads() at source line `line` (threads at different lines mean divergent barriers).
void sync_block(int line);

// The shuffles' common step: lane deposits `value`, waits until every lane of `mask` has
// deposited at the same line, and gets the 32 deposits (valid until its next shuffle).
const std::uint64_t* warp_exchange(std::uint64_t value, unsigned mask, int line);

// The block's shared array for declaration `site` (the address of a static), `bytes` long:
// allocated by the first thread to ask, poisoned, the same for the whole block.
void* shared_storage(const void* site, std::size_t bytes, std::size_t align);

[[noreturn]] void out_of_bounds(const void* address, std::size_t bytes, const void* begin, const void* end);
[[noreturn]] void misaligned(const void* address, std::size_t align);

// A device pointer that knows the bytes [begin, end) it may reach (a tensor's elements).
template <typename T>
class Ptr {
 public:
  Ptr(std::nullptr_t = nullptr) : p_(nullptr), begin_(nullptr), end_(nullptr) {}
  Ptr(T* p, const void* begin, const void* end)
      : p_(p), begin_(static_cast<const char*>(begin)), end_(static_cast<const char*>(end)) {}
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  Ptr(const Ptr<U>& other) : p_(other.get()), begin_(other.begin()), end_(other.end()) {}

  T* checked(std::size_t bytes, std::size_t align) const {
    const char* a = reinterpret_cast<const char*>(p_);
    if (a < begin_ || a + bytes > end_ || begin_ == nullptr) out_of_bounds(p_, bytes, begin_, end_);
    if (reinterpret_cast<std::uintptr_t>(a) % align) misaligned(p_, align);
    return p_;
  }
  template <typename I>
  T& operator[](I i) const { return *(*this + i).checked(sizeof(T), alignof(T)); }
  T& operator*() const { return *checked(sizeof(T), alignof(T)); }
  template <typename I>
  Ptr operator+(I i) const { return Ptr(p_ + i, begin_, end_); }
  bool operator==(std::nullptr_t) const { return p_ == nullptr; }
  bool operator!=(std::nullptr_t) const { return p_ != nullptr; }

  T* get() const { return p_; }
  const char* begin() const { return begin_; }
  const char* end() const { return end_; }

 private:
  T* p_;
  const char* begin_;
  const char* end_;
};

// A U (a vector of elements) read or written at p: bounds and U's alignment checked.
template <typename U, typename T>
U load_as(Ptr<T> p) {
  U value;
  std::memcpy(&value, p.checked(sizeof(U), alignof(U)), sizeof(U));
  return value;
}
template <typename U, typename T>
void store_as(Ptr<T> p, const U& value) {
  std::memcpy(p.checked(sizeof(U), alignof(U)), &value, sizeof(U));
}

// A shared array with bounds-checked indexing, laid out as the plain array.
template <typename E, std::size_t N>
struct CheckedArray {
  E v[N];
  template <typename I>
  E& operator[](I i) {
    if (!in_range(i)) out_of_bounds(v + i, sizeof(E), v, v + N);
    return v[i];
  }
  template <typename I>
  static bool in_range(I i) {
    if constexpr (std::is_signed_v<I>) {
      if (i < 0) return false;
    }
    return std::size_t(i) < N;
  }
};
template <typename T>
struct Checked {
  using type = T;
};
template <typename T, std::size_t N>
struct Checked<T[N]> {
  using type = CheckedArray<typename Checked<T>::type, N>;
};

template <typename T>
T shuffle(unsigned mask, T var, int line, int (*source)(int lane, int arg, int width), int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move values of up to 8 bytes");
  if (width < 1 || width > 32 || (width & (width - 1))) fail("shuffle width must be a power of two <= 32");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  const std::uint64_t* lanes = warp_exchange(bits, mask, line);
  const int lane = int(thread_idx().x % 32), src = source(lane, arg, width);
  if (src != lane && !(mask >> src & 1)) fail("shuffle reads lane " + std::to_string(src) + ", which is not in the mask");
  std::memcpy(&var, &lanes[src], sizeof(T));
  return var;
}

// Source lanes as CUDA defines them: within segments of `width` lanes; a lane whose source
// falls outside its segment gets its own value.
inline int shfl_source(int lane, int src, int width) { return (lane & ~(width - 1)) + (src & (width - 1)); }
inline int shfl_up_source(int lane, int delta, int width) { return lane % width >= delta ? lane - delta : lane; }
inline int shfl_down_source(int lane, int delta, int width) {
  return lane % width + delta < width ? lane + delta : lane;
}
inline int shfl_xor_source(int lane, int mask, int width) {
  const int src = lane ^ mask;
  return src < ((lane / width) + 1) * width ? src : lane;
}

// One launch: `body(arg)` runs as every thread of every block.
struct Launch {
  dim3 grid, block;
  const char* kernel;  // for messages and the launch log
};
void launch(const Launch& config, void (*body)(const void*), const void* arg);

// The name of a kernel instantiation, cut from the compiler's signature of kernel_name
// ("... [with auto Kernel = fusedgan::{anonymous}::name<args>; ...]"), namespaces dropped.
inline std::string kernel_name_in(const std::string& signature) {
  const auto begin = signature.find("Kernel = ") + 9;
  std::string name = signature.substr(begin, signature.find_first_of(";]", begin) - begin);
  for (const std::string prefix : {"fusedgan::", "{anonymous}::"}) {
    for (auto at = name.find(prefix); at != std::string::npos; at = name.find(prefix)) name.erase(at, prefix.size());
  }
  return name;
}
template <auto Kernel>
const char* kernel_name() {
  static const std::string name = kernel_name_in(__PRETTY_FUNCTION__);
  return name.c_str();
}

// Kernel<<<grid, block>>>(args...): every thread of every block calls Kernel(args...).
template <auto Kernel, typename... Args>
void launch_kernel(dim3 grid, dim3 block, const Args&... args) {
  const std::tuple<Args...> params(args...);
  launch(
      {grid, block, kernel_name<Kernel>()},
      [](const void* p) { std::apply(Kernel, *static_cast<const std::tuple<Args...>*>(p)); }, &params);
}

// The launches since the last call ("kernel<...> grid (x, y, z)"), recorded while `record`
// was last set true: how tests see which paths their shapes take.
std::vector<std::string> launch_log(bool record);

}  // namespace simt

template <typename T>
using identity_t = T;

}  // namespace fusedgan

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define threadIdx (::fusedgan::simt::thread_idx())
#define blockIdx (::fusedgan::simt::block_idx())
#define blockDim (::fusedgan::simt::block_dim())
#define gridDim (::fusedgan::simt::grid_dim())
#define __syncthreads() ::fusedgan::simt::sync_block(__LINE__)
// `static char site` is one per declaration and per template instantiation, as CUDA's
// __shared__ variables are.
#define FUSEDGAN_SHARED(name, ...)                                                                          \
  static char name##_site;                                                                                  \
  auto& name = *static_cast<typename ::fusedgan::simt::Checked<__VA_ARGS__>::type*>(                      \
      ::fusedgan::simt::shared_storage(&name##_site, sizeof(__VA_ARGS__), alignof(__VA_ARGS__)))

template <typename T>
T __shfl_sync(unsigned mask, T var, int src, int width = 32, int line = __builtin_LINE()) {
  return ::fusedgan::simt::shuffle(mask, var, line, ::fusedgan::simt::shfl_source, src, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, int line = __builtin_LINE()) {
  return ::fusedgan::simt::shuffle(mask, var, line, ::fusedgan::simt::shfl_up_source, int(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, int line = __builtin_LINE()) {
  return ::fusedgan::simt::shuffle(mask, var, line, ::fusedgan::simt::shfl_down_source, int(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, int line = __builtin_LINE()) {
  return ::fusedgan::simt::shuffle(mask, var, line, ::fusedgan::simt::shfl_xor_source, lane_mask, width);
}
