// Execution environment of the C++ CPU kernels: the floating-point mode and the threads.
//
// Denormals: every kernel runs with flush-to-zero and denormals-are-zero set (x86: MXCSR bits
// 15 and 6; aarch64: FPCR.FZ) on every thread that computes, and each thread's previous mode is
// restored when the kernel returns. exp(-large) of far mixture components is the usual source:
// on many Intel cores each denormal result costs a microcode assist (5-9x slower kernels).
// Flushed values are below the smallest normal (1.2e-38 float, 2.2e-308 double): a flushed
// component contributes less than that, relative, to a sum that holds a term of order 1.
//
// Threads: a process-wide pool of std::threads (no OpenMP runtime: the pool's waiting is ours to
// bound, whatever OMP_WAIT_POLICY says and whichever libgomp torch loaded first). A kernel call
// may use up to the thread count the Python glue passes (torch.get_num_threads()); small calls run
// on the calling thread alone, with no other thread woken. Idle workers spin for at most
// kSpinMicros (FASTSAMP_SPIN_US) and then sleep on a condition variable, so they never hold a
// core that another process needs for longer than that. Pool and mode are per call: a kernel
// called from several Python threads at once runs the second call on its own thread.
#pragma once
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace fastsamp {
namespace cpu {

// Whether kernels flush denormals (true unless set_flush_denormals(false): a switch for
// measuring what flushing buys on a CPU, not for use). Returns the previous setting.
bool flush_denormals_enabled();
bool set_flush_denormals(bool on);

// FTZ/DAZ for the lifetime of the object on the calling thread, then the previous mode.
class FlushDenormals {
 public:
#if defined(__x86_64__) || defined(__i386__)
  static constexpr unsigned kBits = 0x8040u;  // FTZ (bit 15) | DAZ (bit 6)
  FlushDenormals() : prev_(_mm_getcsr()) {
    if (flush_denormals_enabled()) _mm_setcsr(prev_ | kBits);
  }
  ~FlushDenormals() { _mm_setcsr(prev_); }
  // Clears FTZ/DAZ on the calling thread (a new thread inherits its creator's mode).
  static void clear() { _mm_setcsr(_mm_getcsr() & ~kBits); }

 private:
  unsigned prev_;
#elif defined(__aarch64__)
  static constexpr uint64_t kBits = uint64_t(1) << 24;  // FPCR.FZ
  FlushDenormals() {
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(prev_));
    const uint64_t v = prev_ | kBits;
    if (flush_denormals_enabled()) __asm__ __volatile__("msr fpcr, %0" : : "r"(v));
  }
  ~FlushDenormals() { __asm__ __volatile__("msr fpcr, %0" : : "r"(prev_)); }
  static void clear() {
    uint64_t v;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
    v &= ~kBits;
    __asm__ __volatile__("msr fpcr, %0" : : "r"(v));
  }

 private:
  uint64_t prev_;
#else
  FlushDenormals() {}
  static void clear() {}
#endif
 public:
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;
};

// The scope of one kernel call on the calling thread: FTZ/DAZ, and the number of threads the
// kernel may use (n_threads <= 0: the machine's hardware threads).
class KernelScope {
 public:
  explicit KernelScope(int64_t n_threads);
  ~KernelScope();
  KernelScope(const KernelScope&) = delete;
  KernelScope& operator=(const KernelScope&) = delete;

 private:
  FlushDenormals fp_;
  int prev_budget_;
};

// Threads the current kernel may use (1 outside a KernelScope).
int thread_budget();

// Threads for `work` units of work when one thread should have at least `grain` of them:
// min(thread_budget(), work / grain), at least 1.
int threads_for(int64_t work, int64_t grain);

// Runs job(tid, nt) for tid = 0 .. nt-1, tid 0 on the calling thread, the others on pool threads
// (each under FlushDenormals), and returns when all are done; exceptions are rethrown here. nt <= 1
// calls job(0, 1) directly. When the pool is busy (a kernel running on another Python thread)
// the calling thread runs job(0, nt) .. job(nt-1, nt) itself, so results never depend on it.
using JobFn = void (*)(void* ctx, int tid, int nt);
void run_parallel(int nt, JobFn fn, void* ctx);

// Jobs handed to the pool since the process started (or the fork), its worker threads, and the
// spin bound in microseconds: for tests and benchmarks.
struct PoolStats {
  int64_t jobs, workers, spin_us;
};
PoolStats pool_stats();

template <typename F>
void parallel(int nt, F&& f) {
  if (nt <= 1) {
    f(0, 1);
    return;
  }
  run_parallel(nt, [](void* c, int tid, int n) { (*static_cast<F*>(c))(tid, n); }, &f);
}

// [0, n) split into nt contiguous ranges: f(begin, end) on each thread (the static schedule).
template <typename F>
void parallel_for(int nt, int64_t n, F&& f) {
  parallel(nt, [&](int tid, int nth) {
    const int64_t per = (n + nth - 1) / nth;
    const int64_t b = per * tid < n ? per * tid : n, e = per * (tid + 1) < n ? per * (tid + 1) : n;
    if (b < e) f(b, e);
  });
}

}  // namespace cpu
}  // namespace fastsamp
