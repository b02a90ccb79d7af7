// The scheduler of simt.h: blocks on OpenMP threads, the threads of a block as fibers.
//
// Why fibers, not an OS thread per CUDA thread: a block of 256 threads meets a barrier or a
// shuffle up to ~20 times, and every one would cost each OS thread a kernel-level context
// switch (2 cores here); a fiber switch is a handful of register moves. And fibers make the
// interleaving a function of the seed alone, so a failing schedule can be replayed, which
// preemptive OS threads cannot promise. The price: a thread runs uninterrupted from one
// barrier or shuffle to the next, so races are exposed at that granularity (the order of
// those stretches is what the seed shuffles).
#include "simt.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <utility>
#include <stdexcept>
#include <vector>

#if !defined(__x86_64__) || defined(FUSEDGAN_SIMT_UCONTEXT)
#include <ucontext.h>
#define FUSEDGAN_SIMT_USE_UCONTEXT 1
#endif

namespace fusedgan {
namespace simt {
namespace {

// ---------------------------------------------------------------------------------------
// Contexts: a suspended execution and the switch between two.
// ---------------------------------------------------------------------------------------

#if FUSEDGAN_SIMT_USE_UCONTEXT
// Portable, but swapcontext also saves the signal mask (a system call, ~0.3 us a switch).
struct Context {
  ucontext_t uc;
};
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
void make_context(Context& c, char* stack, std::size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#else
// x86-64 System V: save the callee-saved registers on the current stack, swap stack
// pointers, restore them from the other stack. (Caller-saved registers are the caller's
// business; MXCSR and the x87 control word are never changed by the kernels.)
extern "C" void fusedgan_simt_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .type fusedgan_simt_switch, @function
fusedgan_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fusedgan_simt_switch, .-fusedgan_simt_switch
)");
struct Context {
  void* sp = nullptr;
};
void switch_context(Context& from, Context& to) { fusedgan_simt_switch(&from.sp, to.sp); }
void make_context(Context& c, char* stack, std::size_t size, void (*entry)()) {
  // The new stack, as fusedgan_simt_switch leaves one: six registers, then the address
  // `ret` jumps to, above it a dummy return address so that entry starts with the stack
  // aligned as after a call (rsp + 8 a multiple of 16).
  auto top = reinterpret_cast<std::uintptr_t>(stack + size) & ~std::uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(entry);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  c.sp = sp;
}
#endif

// A fiber stack with a guard page below it (an overflow faults instead of corrupting).
class Stack {
 public:
  static constexpr std::size_t kSize = 256 << 10;
  Stack() {
    page_ = std::size_t(sysconf(_SC_PAGESIZE));
    base_ = static_cast<char*>(mmap(nullptr, kSize + page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base_ == MAP_FAILED) throw std::runtime_error("fusedgan simt: cannot map a fiber stack");
    mprotect(base_, page_, PROT_NONE);
  }
  ~Stack() { munmap(base_, kSize + page_); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  char* bottom() const { return base_ + page_; }

 private:
  char* base_;
  std::size_t page_;
};

// ---------------------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------------------

enum class State { kReady, kAtBarrier, kAtShuffle, kDone };

struct Thread {
  dim3 idx;
  int linear = 0;
  State state = State::kReady;
  int line = 0;         // where it waits
  unsigned mask = 0;    // of the shuffle it waits at
  Context context;
};

struct Warp {
  int arrived = 0, expected = 0;
  int line = 0;
  unsigned mask = 0, returned = 0;  // the mask of the shuffle waited at; lanes that returned
  std::uint64_t deposit[32] = {};
  std::uint64_t lanes[32] = {};  // the deposits of the last completed shuffle
};

constexpr std::size_t kSharedBytes = 48 << 10;  // CUDA's static shared memory per block
constexpr long kParallelBlocks = 8;               // launches of fewer blocks run on the calling thread

// splitmix64: the seed of each block's schedule.
std::uint64_t mix(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One OpenMP thread's block in flight (its fibers are reused from block to block).
struct Worker {
  const Launch* config = nullptr;
  void (*body)(const void*) = nullptr;
  const void* arg = nullptr;
  dim3 block_idx;
  std::vector<Thread> threads;
  std::vector<std::unique_ptr<Stack>> stacks;  // threads[i] runs on stacks[i]; kept from block to block
  std::vector<Warp> warps;
  std::vector<int> ready;  // runnable threads; the scheduler takes them from the back
  std::uint64_t rng = 0;
  Thread* current = nullptr;
  Context scheduler;
  int barrier_arrived = 0, barrier_line = 0, done = 0;
  alignas(64) unsigned char shared[kSharedBytes];
  std::size_t shared_used = 0;
  std::vector<std::pair<const void*, std::size_t>> shared_sites;
  std::string error;

  void run_block(dim3 idx, std::uint64_t seed);
  void ready_all();
  void shuffle_ready_from(std::size_t begin);
  void resume(int id);
  void after_yield(Thread& t);
  std::string where(const Thread& t) const;
};

thread_local Worker* t_worker = nullptr;

Worker& worker() {
  if (t_worker == nullptr || t_worker->current == nullptr) {
    std::abort();  // a simt function called outside a kernel: a bug in the caller, not the kernel
  }
  return *t_worker;
}

Thread& self() { return *worker().current; }

// Back to the scheduler; returns when the scheduler resumes this thread.
void yield_to_scheduler() {
  Worker& w = worker();
  switch_context(w.current->context, w.scheduler);
}

void fiber_entry() {
  Worker& w = *t_worker;
  w.body(w.arg);
  w.current->state = State::kDone;
  yield_to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

std::string Worker::where(const Thread& t) const {
  std::ostringstream out;
  out << " (kernel " << config->kernel << ", block (" << block_idx.x << ", " << block_idx.y << ", " << block_idx.z
      << "), thread (" << t.idx.x << ", " << t.idx.y << ", " << t.idx.z << "))";
  return out.str();
}

// Fisher-Yates over the threads made ready since `begin`, from the block's generator: the
// order they will run in.
void Worker::shuffle_ready_from(std::size_t begin) {
  for (std::size_t i = ready.size() - begin; i > 1; --i) {
    rng = mix(rng);
    std::swap(ready[begin + i - 1], ready[begin + rng % i]);
  }
}

void Worker::ready_all() {
  const std::size_t begin = ready.size();
  for (int i = 0; i < int(threads.size()); ++i) ready.push_back(i);
  shuffle_ready_from(begin);
}

void Worker::resume(int id) {
  current = &threads[id];
  current->state = State::kReady;
  switch_context(scheduler, current->context);
}

void Worker::after_yield(Thread& t) {
  const int n = int(threads.size());
  if (t.state == State::kDone) {
    ++done;
    Warp& warp = warps[t.linear / 32];
    warp.returned |= 1u << (t.linear % 32);
    if (barrier_arrived > 0)
      error = "a thread returned while others wait at __syncthreads on line " + std::to_string(barrier_line) + where(t);
    if (warp.arrived > 0 && (warp.mask & warp.returned))
      error = "a thread returned while its warp waits for it at a shuffle on line " + std::to_string(warp.line) + where(t);
    return;
  }
  if (t.state == State::kAtBarrier) {
    if (done > 0) {
      error = "__syncthreads on line " + std::to_string(t.line) + " after " + std::to_string(done) +
              " threads of the block returned" + where(t);
      return;
    }
    if (barrier_arrived > 0 && t.line != barrier_line) {
      error = "divergent __syncthreads: threads wait on lines " + std::to_string(barrier_line) + " and " +
              std::to_string(t.line) + where(t);
      return;
    }
    barrier_line = t.line;
    if (++barrier_arrived == n) {
      barrier_arrived = 0;
      ready_all();
    }
    return;
  }
  // At a shuffle.
  Warp& warp = warps[t.linear / 32];
  const int first = t.linear / 32 * 32, lanes = std::min(32, n - first);
  const unsigned present = lanes == 32 ? ~0u : (1u << lanes) - 1;
  if (t.mask & ~present) {
    error = "shuffle mask names lanes past the end of the block" + where(t);
    return;
  }
  if (!(t.mask >> (t.linear % 32) & 1)) {
    error = "a lane calls a shuffle whose mask leaves it out" + where(t);
    return;
  }
  if (warp.arrived > 0 && (t.line != warp.line || t.mask != warp.mask)) {
    error = "divergent shuffles: lanes of one warp wait on lines " + std::to_string(warp.line) + " and " +
            std::to_string(t.line) + where(t);
    return;
  }
  if (t.mask & warp.returned) {
    error = "shuffle on line " + std::to_string(t.line) + " waits for lanes that returned" + where(t);
    return;
  }
  if (warp.arrived == 0) warp.line = t.line, warp.mask = t.mask, warp.expected = __builtin_popcount(t.mask);
  if (++warp.arrived == warp.expected) {
    warp.arrived = 0;
    std::copy(warp.deposit, warp.deposit + 32, warp.lanes);
    const std::size_t begin = ready.size();
    for (int lane = 0; lane < lanes; ++lane)
      if (t.mask >> lane & 1) ready.push_back(first + lane);
    shuffle_ready_from(begin);
  }
}

void Worker::run_block(dim3 idx, std::uint64_t seed) {
  const dim3 b = config->block;
  const int n = int(b.x * b.y * b.z);
  block_idx = idx;
  rng = seed;
  threads.resize(n);
  while (int(stacks.size()) < n) stacks.push_back(std::make_unique<Stack>());
  warps.assign((n + 31) / 32, Warp{});
  for (int i = 0; i < n; ++i) {
    Thread& t = threads[i];
    t.idx = dim3(i % b.x, i / b.x % b.y, i / (b.x * b.y));
    t.linear = i;
    t.state = State::kReady;
    make_context(t.context, stacks[i]->bottom(), Stack::kSize, fiber_entry);
  }
  barrier_arrived = done = 0;
  std::memset(shared, 0xFF, shared_used);
  shared_used = 0;
  shared_sites.clear();
  ready.clear();
  ready_all();
  while (!ready.empty() && error.empty()) {
    const int id = ready.back();
    ready.pop_back();
    resume(id);
    after_yield(threads[id]);
  }
  current = nullptr;
  if (error.empty() && done < n) {
    std::ostringstream out;
    out << "deadlock: " << n - done << " threads never finish (";
    for (const Thread& t : threads) {
      if (t.state == State::kAtBarrier) {
        out << "some wait at __syncthreads on line " << t.line << "; ";
        break;
      }
    }
    for (const Thread& t : threads) {
      if (t.state == State::kAtShuffle) {
        out << "some wait at a shuffle on line " << t.line << "; ";
        break;
      }
    }
    out << done << " returned)" << where(threads[0]);
    error = out.str();
  }
}

std::mutex log_mutex;
bool log_on = false;
std::vector<std::string> log;

std::uint64_t schedule_seed() {
  const char* text = std::getenv("FUSEDGAN_SIMT_SEED");
  return text ? std::strtoull(text, nullptr, 10) : 0;
}

}  // namespace

const dim3& thread_idx() { return self().idx; }
const dim3& block_idx() { return worker().block_idx; }
const dim3& block_dim() { return worker().config->block; }
const dim3& grid_dim() { return worker().config->grid; }

void fail(const std::string& what) {
  Worker& w = worker();
  w.error = what + w.where(*w.current);
  w.current->state = State::kDone;
  switch_context(w.current->context, w.scheduler);
  std::abort();  // a failed block is never resumed
}

void out_of_bounds(const void* address, std::size_t bytes, const void* begin, const void* end) {
  if (begin == nullptr) fail("null pointer dereferenced");
  const auto a = reinterpret_cast<std::intptr_t>(address), lo = reinterpret_cast<std::intptr_t>(begin),
             hi = reinterpret_cast<std::intptr_t>(end);
  std::ostringstream out;
  out << "out-of-bounds access of " << bytes << " bytes at byte " << a - lo << " of a " << hi - lo << "-byte span";
  fail(out.str());
}

void misaligned(const void* address, std::size_t align) {
  fail("misaligned access: address " + std::to_string(reinterpret_cast<std::uintptr_t>(address) % align) +
       " bytes past a multiple of " + std::to_string(align));
}

void sync_block(int line) {
  Thread& t = self();
  t.state = State::kAtBarrier;
  t.line = line;
  yield_to_scheduler();
}

const std::uint64_t* warp_exchange(std::uint64_t value, unsigned mask, int line) {
  Worker& w = worker();
  Thread& t = *w.current;
  Warp& warp = w.warps[t.linear / 32];
  warp.deposit[t.linear % 32] = value;
  t.state = State::kAtShuffle;
  t.line = line;
  t.mask = mask;
  yield_to_scheduler();
  return warp.lanes;
}

void* shared_storage(const void* site, std::size_t bytes, std::size_t align) {
  Worker& w = worker();
  for (const auto& [known, offset] : w.shared_sites)
    if (known == site) return w.shared + offset;
  const std::size_t offset = (w.shared_used + align - 1) / align * align;
  if (offset + bytes > kSharedBytes) fail("more than 48 KiB of shared memory");
  w.shared_used = offset + bytes;
  std::memset(w.shared + offset, 0xFF, bytes);
  w.shared_sites.emplace_back(site, offset);
  return w.shared + offset;
}

void launch(const Launch& config, void (*body)(const void*), const void* arg) {
  const dim3 g = config.grid, b = config.block;
  const long blocks = long(g.x) * g.y * g.z;
  if (b.x * b.y * b.z == 0 || b.x * b.y * b.z > 1024 || b.z > 64)
    throw std::runtime_error(std::string("fusedgan simt: invalid block size for ") + config.kernel);
  if (g.x > 2147483647u || g.y > 65535 || g.z > 65535 || blocks == 0)  // CUDA's limits: 2^31 - 1, 65535, 65535
    throw std::runtime_error(std::string("fusedgan simt: invalid grid for ") + config.kernel);
  {
    std::lock_guard<std::mutex> lock(log_mutex);
    if (log_on)
      log.push_back(std::string(config.kernel) + " grid (" + std::to_string(g.x) + ", " + std::to_string(g.y) + ", " +
                    std::to_string(g.z) + ")");
  }
  const std::uint64_t seed = schedule_seed();
  std::atomic<bool> failed{false};
  std::string error;
  std::mutex error_mutex;
  // Each OpenMP thread runs blocks on its own worker. A launch of a few blocks stays on the
  // calling thread: waking a team costs more than those blocks, and on a busy machine a
  // team waits for its slowest thread's next time slice.
#pragma omp parallel if (blocks >= kParallelBlocks)
  {
    static thread_local std::unique_ptr<Worker> own;
    if (!own) own = std::make_unique<Worker>();
    Worker& w = *own;
    Worker* outer = t_worker;
    t_worker = &w;
    w.config = &config;
    w.body = body;
    w.arg = arg;
#pragma omp for schedule(dynamic, 1)
    for (long i = 0; i < blocks; ++i) {
      if (failed.load(std::memory_order_relaxed)) continue;
      w.error.clear();
      w.run_block(dim3(unsigned(i % g.x), unsigned(i / g.x % g.y), unsigned(i / (long(g.x) * g.y))),
                  mix(seed ^ mix(std::uint64_t(i))));
      if (!w.error.empty()) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!failed.exchange(true)) error = w.error;
      }
    }
    t_worker = outer;
  }
  if (failed) throw std::runtime_error("fusedgan simt: " + error);
}

std::vector<std::string> launch_log(bool record) {
  std::lock_guard<std::mutex> lock(log_mutex);
  log_on = record;
  return std::exchange(log, {});
}

}  // namespace simt
}  // namespace fusedgan
