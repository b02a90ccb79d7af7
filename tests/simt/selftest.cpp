// Self-test of the SIMT emulation (csrc/simt/) and of the device helpers every CUDA kernel
// uses (csrc/cuda/device.cuh), built without torch by tests/test_simt.py. Deliberately
// broken kernels must be caught: a missing barrier, shared memory read before it is
// written, out-of-bounds and misaligned accesses, barriers and shuffles that not every
// thread reaches. Prints one line per check, "ok <name>" or "FAILED <name>: why".
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../csrc/cuda/device.cuh"

using fusedgan::dptr;
using fusedgan::kThreads;
using fusedgan::simt::dim3;
using fusedgan::simt::launch_kernel;

namespace {

int failures = 0;

void check(const std::string& name, bool ok, const std::string& why = "") {
  std::printf("%s %s%s%s\n", ok ? "ok" : "FAILED", name.c_str(), ok ? "" : ": ", ok ? "" : why.c_str());
  failures += !ok;
}

template <typename T>
dptr<T> ptr(std::vector<T>& v) {
  return dptr<T>(v.data(), v.data(), v.data() + v.size());
}

// The error message of f(), or "" when it does not throw.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

void set_seed(int seed) { setenv("FUSEDGAN_SIMT_SEED", std::to_string(seed).c_str(), 1); }

// ---- block sums through shared memory: correct, without its barrier, reading too early ----

// out[block] = the sum of in[block * 256 + t] over the block's threads: each warp's lane 0
// stores its warp's sum, thread 0 adds them. WITH_BARRIER false drops the barrier between.
template <bool WITH_BARRIER>
__global__ void warp_sums_kernel(dptr<const float> in, dptr<float> out) {
  FUSEDGAN_SHARED(partial, float[8]);
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int delta = 16; delta > 0; delta /= 2) v += __shfl_down_sync(0xffffffffu, v, delta);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  if (WITH_BARRIER) __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0;
    for (int w = 0; w < 8; ++w) total += partial[w];
    out[blockIdx.x] = total;
  }
}

// Thread 0 reads a slot that no thread writes.
__global__ void read_unwritten_kernel(dptr<float> out) {
  FUSEDGAN_SHARED(slots, float[4]);
  if (threadIdx.x < 3) slots[threadIdx.x] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = slots[0] + slots[1] + slots[2] + slots[3];
}

void test_barriers_and_shared_memory() {
  const int blocks = 16;
  std::vector<float> in(blocks * kThreads), expected(blocks, 0.0f);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = float(i % 7) + 1.0f, expected[i / kThreads] += in[i];
  bool correct_always = true, broken_caught = false;
  for (int seed = 0; seed < 8; ++seed) {
    set_seed(seed);
    std::vector<float> good(blocks), bad(blocks);
    launch_kernel<warp_sums_kernel<true>>(dim3(blocks), dim3(kThreads), ptr(in), ptr(good));
    launch_kernel<warp_sums_kernel<false>>(dim3(blocks), dim3(kThreads), ptr(in), ptr(bad));
    correct_always = correct_always && good == expected;
    broken_caught = broken_caught || bad != expected;
  }
  check("block sum with its barrier is right under every schedule", correct_always);
  check("block sum without its barrier goes wrong under some schedule", broken_caught);
  std::vector<float> out(1, 0.0f);
  launch_kernel<read_unwritten_kernel>(dim3(1), dim3(64), ptr(out));
  check("shared memory read before any write is NaN", std::isnan(out[0]));
}

// ---- accesses outside a tensor, misaligned vectors ----

__global__ void copy_kernel(dptr<const float> in, dptr<float> out, int shift) {
  out[threadIdx.x] = in[int(threadIdx.x) + shift];
}

__global__ void pack_kernel(dptr<const float> in, dptr<float> out, int offset) {
  using P = fusedgan::Pack<float, 4>;
  const P p = fusedgan::load_as<P>(in + (offset + 4 * int(threadIdx.x)));
  fusedgan::store_as(out + 4 * int(threadIdx.x), p);
}

__global__ void shared_overrun_kernel(dptr<float> out) {
  FUSEDGAN_SHARED(slots, float[32]);
  slots[threadIdx.x] = 1.0f;  // 64 threads
  out[0] = 0.0f;
}

void test_bounds() {
  std::vector<float> in(64), out(64);
  check("in-bounds copy runs", error_of([&] {
          launch_kernel<copy_kernel>(dim3(1), dim3(64), ptr(in), ptr(out), 0);
        }).empty());
  const std::string read = error_of([&] { launch_kernel<copy_kernel>(dim3(1), dim3(64), ptr(in), ptr(out), 1); });
  check("read past the end is caught", read.find("out-of-bounds") != std::string::npos, read);
  check("the message names kernel, block and thread",
        read.find("copy_kernel") != std::string::npos && read.find("thread (63, 0, 0)") != std::string::npos, read);
  std::vector<float> small(63);
  const std::string write = error_of([&] { launch_kernel<copy_kernel>(dim3(1), dim3(64), ptr(in), ptr(small), 0); });
  check("write past the end is caught", write.find("out-of-bounds") != std::string::npos, write);
  const std::string before = error_of([&] { launch_kernel<copy_kernel>(dim3(1), dim3(64), ptr(in), ptr(out), -1); });
  check("read before the start is caught", before.find("out-of-bounds") != std::string::npos, before);
  std::vector<float> wide(68), packed(64);
  check("aligned 16-byte packs run", error_of([&] {
          launch_kernel<pack_kernel>(dim3(1), dim3(16), ptr(wide), ptr(packed), 0);
        }).empty());
  const std::string odd = error_of([&] { launch_kernel<pack_kernel>(dim3(1), dim3(16), ptr(wide), ptr(packed), 1); });
  check("a misaligned 16-byte pack is caught", odd.find("misaligned") != std::string::npos, odd);
  const std::string shared = error_of([&] { launch_kernel<shared_overrun_kernel>(dim3(1), dim3(64), ptr(out)); });
  check("indexing past a shared array is caught", shared.find("out-of-bounds") != std::string::npos, shared);
  const std::string null = error_of([&] {
    launch_kernel<copy_kernel>(dim3(1), dim3(64), dptr<const float>(nullptr), ptr(out), 0);
  });
  check("a null pointer is caught", null.find("null pointer") != std::string::npos, null);
  const std::string grid = error_of([&] { launch_kernel<copy_kernel>(dim3(1u << 31), dim3(64), ptr(in), ptr(out), 0); });
  check("a grid of 2^31 blocks along x is refused", grid.find("invalid grid") != std::string::npos, grid);
}

// ---- barriers and shuffles that not every thread reaches ----

__global__ void divergent_barrier_kernel(dptr<float> out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void early_return_kernel(dptr<float> out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void divergent_shuffle_kernel(dptr<float> out) {
  float v = float(threadIdx.x);
  if (threadIdx.x % 2) v = __shfl_down_sync(0xffffffffu, v, 1);
  else v = __shfl_down_sync(0xffffffffu, v, 2);
  out[threadIdx.x] = v;
}

__global__ void shuffle_after_return_kernel(dptr<float> out) {
  if (threadIdx.x == 7) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}

void test_divergence() {
  std::vector<float> out(64);
  const std::string barrier = error_of([&] { launch_kernel<divergent_barrier_kernel>(dim3(1), dim3(64), ptr(out)); });
  check("a barrier only some threads reach is caught", !barrier.empty(), barrier);
  const std::string early = error_of([&] { launch_kernel<early_return_kernel>(dim3(1), dim3(64), ptr(out)); });
  check("a barrier after some threads returned is caught", early.find("returned") != std::string::npos, early);
  const std::string shuffle = error_of([&] { launch_kernel<divergent_shuffle_kernel>(dim3(1), dim3(32), ptr(out)); });
  check("lanes at different shuffles are caught", shuffle.find("divergent shuffles") != std::string::npos, shuffle);
  const std::string gone = error_of([&] { launch_kernel<shuffle_after_return_kernel>(dim3(1), dim3(32), ptr(out)); });
  check("a shuffle waiting for a returned lane is caught", gone.find("returned") != std::string::npos, gone);
  const std::string partial = error_of([&] { launch_kernel<shuffle_after_return_kernel>(dim3(1), dim3(20), ptr(out)); });
  check("a full mask in a partial warp is caught", partial.find("past the end") != std::string::npos, partial);
}

// ---- shuffle semantics, coordinates ----

// out[k * 64 + t]: the four shuffles of value 100 + t, at widths 32 and 8.
__global__ void shuffles_kernel(dptr<int> out) {
  const int t = int(threadIdx.x), v = 100 + t;
  out[0 * 64 + t] = __shfl_sync(0xffffffffu, v, 5);
  out[1 * 64 + t] = __shfl_up_sync(0xffffffffu, v, 3);
  out[2 * 64 + t] = __shfl_down_sync(0xffffffffu, v, 3);
  out[3 * 64 + t] = __shfl_xor_sync(0xffffffffu, v, 6);
  out[4 * 64 + t] = __shfl_sync(0xffffffffu, v, 5, 8);
  out[5 * 64 + t] = __shfl_up_sync(0xffffffffu, v, 3, 8);
  out[6 * 64 + t] = __shfl_down_sync(0xffffffffu, v, 3, 8);
  out[7 * 64 + t] = __shfl_xor_sync(0xffffffffu, v, 6, 8);
  out[8 * 64 + t] = int(__shfl_down_sync(0xffffffffu, double(v) + 0.5, 1) * 2);
}

__global__ void coordinates_kernel(dptr<int> out) {
  const int block = int((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x);
  const int thread = int((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x);
  out[block * int(blockDim.x * blockDim.y * blockDim.z) + thread] += block * 1000 + thread;
}

void test_shuffles_and_coordinates() {
  std::vector<int> out(9 * 64);
  launch_kernel<shuffles_kernel>(dim3(1), dim3(64), ptr(out));
  bool ok = true;
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, base = t - lane, v = 100 + t;
    const int expected[9] = {
        100 + base + 5,
        lane >= 3 ? v - 3 : v,
        lane + 3 < 32 ? v + 3 : v,
        100 + base + (lane ^ 6),
        100 + base + (lane & ~7) + 5,
        lane % 8 >= 3 ? v - 3 : v,
        lane % 8 + 3 < 8 ? v + 3 : v,
        ((lane ^ 6) < (lane / 8 + 1) * 8) ? 100 + base + (lane ^ 6) : v,
        (lane + 1 < 32 ? 2 * (v + 1) : 2 * v) + 1,
    };
    for (int k = 0; k < 9; ++k) ok = ok && out[k * 64 + t] == expected[k];
  }
  check("__shfl_sync, _up, _down and _xor at widths 32 and 8 as CUDA defines them", ok);
  std::vector<int> coords(2 * 3 * 4 * 64, 0), expected(coords.size());
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = int(i / 64) * 1000 + int(i % 64);
  launch_kernel<coordinates_kernel>(dim3(2, 3, 4), dim3(4, 4, 4), ptr(coords));
  check("every thread of every block of a 3D grid runs once", coords == expected);
}

// ---- device.cuh: FastDivider, the row cursor, block_reduce ----

template <typename index_t>
bool divider_matches(index_t d, const std::vector<index_t>& numerators) {
  const fusedgan::FastDivider<index_t> div(d);
  for (index_t n : numerators)
    if (div.div(n) != n / d) return false;
  return true;
}

template <typename index_t>
void test_fast_divider(const char* name) {
  std::mt19937_64 rng(1);
  const index_t top = std::numeric_limits<index_t>::max();
  std::vector<index_t> numerators = {0, 1, 2, 3, top, top - 1, top / 2, top / 2 + 1};
  for (int i = 0; i < 20000; ++i) numerators.push_back(index_t(rng() % (std::uint64_t(top) + 1)));
  for (index_t n = 0; n < 5000; ++n) numerators.push_back(n);
  std::vector<index_t> divisors = {1, 2, 3, 5, 6, 7, 9, 25, 49, 100, 641, 1000, 4096, 4097, 65535, 65536, 65537,
                                   top, top - 1, top / 2, top / 2 + 1, top / 3};
  for (int k = 1; k < int(8 * sizeof(index_t)) - 1; ++k) {
    divisors.push_back(index_t(1) << k);
    divisors.push_back((index_t(1) << k) - 1);
    divisors.push_back((index_t(1) << k) + 1);
  }
  for (int i = 0; i < 300; ++i) divisors.push_back(index_t(1 + rng() % std::uint64_t(top)));
  for (int i = 0; i < 300; ++i) divisors.push_back(index_t(1 + rng() % 100000));
  bool ok = true;
  for (index_t d : divisors) ok = ok && divider_matches(d, numerators);
  check(std::string("FastDivider<") + name + "> equals division", ok);
}

// out[r] = (n, s) the cursor of thread 0 finds at row r, stepping by `step` rows.
template <typename index_t>
__global__ void cursor_kernel(fusedgan::Rows<index_t> rows, index_t step, dptr<index_t> out) {
  fusedgan::Cursor<index_t> cur = rows.at(threadIdx.x);
  const fusedgan::Cursor<index_t> by = rows.at(step);
  for (; cur.r < rows.R; rows.advance(cur, by)) out[2 * cur.r] = cur.n, out[2 * cur.r + 1] = cur.s;
}

void test_cursor() {
  bool ok = true;
  for (int S : {1, 2, 3, 7, 16, 100, 257}) {
    for (int step : {1, 5, 64, 256, 1000}) {
      const int R = 3 * S + 11;
      fusedgan::Rows<int> rows{R, S, 1, R, fusedgan::FastDivider<int>(S), 0};
      std::vector<int> out(2 * R, -1);
      launch_kernel<cursor_kernel<int>>(dim3(1), dim3(unsigned(std::min(step, R))), rows, step, ptr(out));
      for (int r = 0; r < R; ++r) ok = ok && out[2 * r] == r / S && out[2 * r + 1] == r % S;
    }
  }
  check("a row cursor advanced by steps visits (r / S, r % S)", ok);
}

// Per channel lane: the sum and the Chan-merged (count, mean, M2) of values t * 0.5 + lane_c.
__global__ void block_reduce_kernel(int c_shift, dptr<double> out) {
  using fusedgan::Acc;
  const int lane_c = int(threadIdx.x) & ((1 << c_shift) - 1);
  const double v = double(threadIdx.x) * 0.5 + lane_c;
  const Acc<double, 1> sum = fusedgan::block_reduce(Acc<double, 1>{{v}}, c_shift, fusedgan::SumMerge{});
  const Acc<double, 3> stats = fusedgan::block_reduce(Acc<double, 3>{{1.0, v, 0.0}}, c_shift, fusedgan::WelfordMerge{});
  if ((int(threadIdx.x) >> c_shift) == 3) {  // any row lane gets the channel's totals
    out[4 * lane_c] = sum.v[0];
    out[4 * lane_c + 1] = stats.v[0];
    out[4 * lane_c + 2] = stats.v[1];
    out[4 * lane_c + 3] = stats.v[2];
  }
}

void test_block_reduce() {
  bool ok = true;
  for (int c_shift = 0; c_shift <= 5; ++c_shift) {
    const int lanes = 1 << c_shift;
    std::vector<double> out(4 * lanes, -1.0);
    launch_kernel<block_reduce_kernel>(dim3(1), dim3(kThreads), c_shift, ptr(out));
    for (int c = 0; c < lanes; ++c) {
      double sum = 0, count = 0, m2 = 0;
      for (int t = c; t < kThreads; t += lanes) sum += t * 0.5 + c, ++count;
      const double mean = sum / count;
      for (int t = c; t < kThreads; t += lanes) m2 += (t * 0.5 + c - mean) * (t * 0.5 + c - mean);
      ok = ok && out[4 * c] == sum && out[4 * c + 1] == count && std::abs(out[4 * c + 2] - mean) < 1e-12 * mean &&
           std::abs(out[4 * c + 3] - m2) < 1e-12 * m2;
    }
  }
  check("block_reduce gives each channel lane its totals, for 1 to 32 channel lanes", ok);
}

}  // namespace

int main() {
  test_barriers_and_shared_memory();
  test_bounds();
  test_divergence();
  test_shuffles_and_coordinates();
  test_fast_divider<std::int32_t>("int32");
  test_fast_divider<std::int64_t>("int64");
  test_cursor();
  test_block_reduce();
  return failures ? 1 : 0;
}
