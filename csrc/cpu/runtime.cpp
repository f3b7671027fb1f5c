// The thread pool and the per-call thread budget of the C++ CPU kernels (see cpu/runtime.h).
#include "cpu/runtime.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace fastsamp {
namespace cpu {
namespace {

constexpr int kMaxThreads = 1024;
thread_local int t_budget = 1;
std::atomic<bool> g_flush{true};

// Bounded spin of idle and waiting threads (microseconds), then a condition-variable sleep.
int64_t spin_micros() {
  static const int64_t us = [] {
    const char* s = std::getenv("FASTSAMP_SPIN_US");
    const long v = s ? std::strtol(s, nullptr, 10) : 50;
    return static_cast<int64_t>(std::clamp<long>(v, 0, 10000));
  }();
  return us;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// Spins until done() or spin_micros() have passed; true if done() became true.
template <typename Done>
bool spin_until(Done&& done) {
  const int64_t us = spin_micros();
  if (us <= 0) return done();
  const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= end) return done();
  }
}

// Workers 1 .. n-1 of a team; the caller is member 0. A job is published as one atomic word
// (generation << 16 | team size), so a worker decides from a single load whether it takes part;
// a member's job cannot end (and job_/ctx_ cannot change) before it has counted itself done.
class Pool {
 public:
  bool try_run(int nt, JobFn fn, void* ctx) {
    std::unique_lock<std::mutex> call(call_mu_, std::try_to_lock);
    if (!call.owns_lock()) return false;
    while (static_cast<int>(workers_.size()) < nt - 1) {
      const int id = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, id, g = gen_] { loop(id, g); });
      workers_.back().detach();
      n_workers_.store(static_cast<int64_t>(workers_.size()), std::memory_order_relaxed);
    }
    jobs_.fetch_add(1, std::memory_order_relaxed);
    fn_ = fn;
    ctx_ = ctx;
    error_ = nullptr;
    pending_.store(nt - 1, std::memory_order_relaxed);
    gen_ += 1;
    word_.store((gen_ << 16) | static_cast<uint64_t>(nt), std::memory_order_release);
    { std::lock_guard<std::mutex> lk(mu_); }  // a worker between its check and its wait sees the word
    work_cv_.notify_all();
    std::exception_ptr mine;
    try {
      fn(ctx, 0, nt);
    } catch (...) {
      mine = std::current_exception();
    }
    auto done = [this] { return pending_.load(std::memory_order_acquire) == 0; };
    if (!spin_until(done)) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, done);
    }
    if (mine) std::rethrow_exception(mine);
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  // Worker `id`, started while the generation was `seen` (it takes part in every later job).
  void loop(int id, uint64_t seen) {
    FlushDenormals::clear();  // created inside a kernel's FTZ scope: start from the default mode
    for (;;) {
      uint64_t w = 0;
      auto fresh = [&] {
        w = word_.load(std::memory_order_acquire);
        return (w >> 16) != seen;
      };
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lk(mu_);
        work_cv_.wait(lk, fresh);
      }
      seen = w >> 16;
      const int nt = static_cast<int>(w & 0xFFFF);
      if (id >= nt) continue;
      try {
        FlushDenormals fp;
        fn_(ctx_, id, nt);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        { std::lock_guard<std::mutex> lk(mu_); }
        done_cv_.notify_all();
      }
    }
  }

  std::mutex call_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::atomic<uint64_t> word_{0};
  std::atomic<int> pending_{0};
  uint64_t gen_ = 0;
  JobFn fn_ = nullptr;
  void* ctx_ = nullptr;
  std::exception_ptr error_;
  std::vector<std::thread> workers_;  // detached; the pool lives until the process ends

 public:
  std::atomic<int64_t> jobs_{0};
  std::atomic<int64_t> n_workers_{0};
};

// The pool is created on first use and never destroyed (its detached workers may be asleep in
// it at exit). A forked child has none of the parent's workers: it starts a pool of its own.
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork;

Pool& pool() {
  std::call_once(g_atfork, [] { pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); }); });
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (!p) {
    Pool* fresh = new Pool();
    if (g_pool.compare_exchange_strong(p, fresh)) {
      p = fresh;
    } else {
      delete fresh;
    }
  }
  return *p;
}

}  // namespace

bool flush_denormals_enabled() { return g_flush.load(std::memory_order_relaxed); }
bool set_flush_denormals(bool on) { return g_flush.exchange(on); }

KernelScope::KernelScope(int64_t n_threads) : prev_budget_(t_budget) {
  int64_t n = n_threads > 0 ? n_threads : static_cast<int64_t>(std::thread::hardware_concurrency());
  t_budget = static_cast<int>(std::clamp<int64_t>(n, 1, kMaxThreads));
}

KernelScope::~KernelScope() { t_budget = prev_budget_; }

int thread_budget() { return t_budget; }

int threads_for(int64_t work, int64_t grain) {
  const int64_t by_size = grain > 0 ? work / grain : work;
  return static_cast<int>(std::clamp<int64_t>(std::min<int64_t>(by_size, t_budget), 1, kMaxThreads));
}

PoolStats pool_stats() {
  Pool& p = pool();
  return {p.jobs_.load(), p.n_workers_.load(), spin_micros()};
}

void run_parallel(int nt, JobFn fn, void* ctx) {
  nt = std::clamp(nt, 1, kMaxThreads);
  if (nt > 1 && pool().try_run(nt, fn, ctx)) return;
  for (int tid = 0; tid < nt; ++tid) fn(ctx, tid, nt);
}

}  // namespace cpu
}  // namespace fastsamp
