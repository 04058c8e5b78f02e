// The threads the native kernels run on: a pool handed to oneDNN through threadpool_iface
// (a synchronous parallel_for), and how many threads it gets.
#pragma once

#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "oneapi/dnnl/dnnl_threadpool_iface.hpp"

namespace vgg_native {

class ThreadPool final : public dnnl::threadpool_interop::threadpool_iface {
 public:
  explicit ThreadPool(int nthreads) : nthreads_(nthreads < 1 ? 1 : nthreads) {
    for (int i = 1; i < nthreads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  }
  ~ThreadPool() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto &t : workers_) t.join();
  }

  int get_num_threads() const override { return nthreads_; }
  bool get_in_parallel() const override { return in_parallel_; }
  uint64_t get_flags() const override { return 0; }

  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    if (n <= 0) return;
    if (n == 1 || workers_.empty() || in_parallel_) {
      for (int i = 0; i < n; ++i) fn(i, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &fn;
      job_n_ = n;
      next_.store(0);
      busy_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    RunJobs(fn, n);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return busy_ == 0; });
    job_ = nullptr;
  }

 private:
  void RunJobs(const std::function<void(int, int)> &fn, int n) {
    in_parallel_ = true;
    for (int i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) fn(i, n);
    in_parallel_ = false;
  }

  void WorkerLoop() {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int, int)> *fn;
      int n;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        fn = job_;
        n = job_n_;
      }
      RunJobs(*fn, n);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (--busy_ == 0) done_.notify_one();
      }
    }
  }

  const int nthreads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int, int)> *job_ = nullptr;
  int job_n_ = 0;
  std::atomic<int> next_{0};
  int busy_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  static inline thread_local bool in_parallel_ = false;
};

// A positive thread count from the environment variable `name`, or 0.
inline int ThreadsFromEnv(const char *name) {
  const char *env = std::getenv(name);
  const int v = env != nullptr ? std::atoi(env) : 0;
  return v > 0 ? v : 0;
}

// VGG_NATIVE_THREADS (old name FAST_CONV_THREADS; launchers that start several processes
// on one machine give each its share), else every CPU this process may run on.
inline int DefaultThreads() {
  for (const char *name : {"VGG_NATIVE_THREADS", "FAST_CONV_THREADS"})
    if (int v = ThreadsFromEnv(name)) return v;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

}  // namespace vgg_native
