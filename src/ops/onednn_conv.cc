// 2-D convolution (NCHW, float32, stride 1, no dilation, one group) for MindSpore CPU as
// "aot" custom operators, computed by oneDNN on the layouts it prefers (format_tag::any),
// so that oneDNN picks its direct jit kernels (jit:avx512_core / jit:avx2 on blocked
// layouts) instead of the im2col+GEMM path MindSpore uses on plain NCHW.
//
// Exported kernels (MindSpore aot signature, see help(mindspore.ops.Custom)):
//   FastConvFwd : inputs  x (N,C,H,W), w (O,C,KH,KW)          -> y (N,O,OH,OW)
//   FastConvBwd : inputs  dy (N,O,OH,OW), x (N,C,H,W), w     -> dx (N,C,H,W), dw (O,C,KH,KW)
// Stride is 1, so the padding follows from the shapes: total = OH - H + KH - 1, with
// top = total / 2 and bottom = total - top (MindSpore's 'same', 'pad' and 'valid' all fit).
//
// Backward data and backward weights share one kernel so that dy is reordered once.
// Primitives, reorders and memory descriptors are cached per shape; the blocked buffers
// live in a grow-only arena shared by all calls. Calls are serialised by one mutex (each
// call already uses every core through the thread pool given to the oneDNN stream).
//
// Links against the libdnnl.so.3 shipped with MindSpore (THREADPOOL CPU runtime).

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "oneapi/dnnl/dnnl_threadpool.hpp"
#include "oneapi/dnnl/dnnl_threadpool_iface.hpp"

#define FASTCONV_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// ---------------------------------------------------------------------------------------
// Thread pool handed to oneDNN through threadpool_iface (synchronous parallel_for).

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
  static thread_local bool in_parallel_;
};
thread_local bool ThreadPool::in_parallel_ = false;

int DefaultThreads() {
  if (const char *env = std::getenv("FAST_CONV_THREADS")) {
    int v = std::atoi(env);
    if (v > 0) return v;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

bool Verbose() {
  static const bool v = [] {
    const char *env = std::getenv("FAST_CONV_VERBOSE");
    return env != nullptr && env[0] != '\0' && env[0] != '0';
  }();
  return v;
}

// ---------------------------------------------------------------------------------------
// Grow-only 64-byte aligned buffers, one per role. Used only under the global mutex.

enum Slot { kSrc = 0, kWei, kDst, kDiffDst, kDiffSrc, kDiffWei, kScratch, kNumSlots };

class Arena {
 public:
  void *Get(int slot, size_t bytes) {
    Buf &b = bufs_[slot];
    if (bytes > b.size) {
      std::free(b.ptr);
      size_t rounded = (bytes + 4095) / 4096 * 4096;
      b.ptr = std::aligned_alloc(64, rounded);
      b.size = b.ptr ? rounded : 0;
      if (!b.ptr) throw std::bad_alloc();
    }
    return b.ptr;
  }

 private:
  struct Buf {
    void *ptr = nullptr;
    size_t size = 0;
  };
  Buf bufs_[kNumSlots];
};

// ---------------------------------------------------------------------------------------
// Shapes and cached plans.

struct ConvShape {
  int64_t n, c, h, w, o, kh, kw, oh, ow;
  int64_t pt, pb, pl, pr;
  bool operator<(const ConvShape &r) const {
    return std::tie(n, c, h, w, o, kh, kw, oh, ow, pt, pb, pl, pr) <
           std::tie(r.n, r.c, r.h, r.w, r.o, r.kh, r.kw, r.oh, r.ow, r.pt, r.pb, r.pl, r.pr);
  }
  memory::dims Src() const { return {n, c, h, w}; }
  memory::dims Wei() const { return {o, c, kh, kw}; }
  memory::dims Dst() const { return {n, o, oh, ow}; }
  memory::dims Strides() const { return {1, 1}; }
  memory::dims PadL() const { return {pt, pl}; }
  memory::dims PadR() const { return {pb, pr}; }
};

// A tensor that MindSpore gives in plain layout and a primitive wants in `inner` layout.
struct Operand {
  memory::desc plain, inner;
  bool needs_reorder = false;
  dnnl::reorder to_inner, to_plain;  // only the direction(s) used are created
};

Operand MakeOperand(const dnnl::engine &eng, const memory::dims &dims, tag plain_tag,
                    const memory::desc &inner, bool in, bool out) {
  Operand op;
  op.plain = memory::desc(dims, dt::f32, plain_tag);
  op.inner = inner;
  op.needs_reorder = !(op.plain == op.inner);
  if (op.needs_reorder) {
    if (in) op.to_inner = dnnl::reorder(dnnl::reorder::primitive_desc(eng, op.plain, eng, op.inner));
    if (out) op.to_plain = dnnl::reorder(dnnl::reorder::primitive_desc(eng, op.inner, eng, op.plain));
  }
  return op;
}

struct FwdPlan {
  dnnl::convolution_forward prim;
  Operand src, wei, dst;
  size_t scratch_bytes = 0;
};

struct BwdPlan {
  dnnl::convolution_backward_data data_prim;
  dnnl::convolution_backward_weights weights_prim;
  Operand diff_dst_d, diff_dst_w;  // for backward data / backward weights
  bool shared_diff_dst = false;    // both want the same layout: one reorder
  Operand wei, diff_src, src, diff_wei;
  size_t scratch_bytes = 0;
};

// Channel-blocked activation layout matching the SIMD width oneDNN runs with (16 floats
// for AVX-512, 8 for AVX2), or `any` where there is none.
std::pair<tag, int64_t> BlockedActivationTag() {
  const unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  if ((isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core) return {tag::nChw16c, 16};
  if ((isa & dnnl_cpu_isa_avx2) == dnnl_cpu_isa_avx2) return {tag::nChw8c, 8};
  return {tag::any, 1};
}

dnnl::convolution_forward::primitive_desc FwdDesc(const dnnl::engine &eng, const ConvShape &s,
                                                  dnnl::prop_kind prop, tag src_tag, tag dst_tag) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return dnnl::convolution_forward::primitive_desc(
      eng, prop, dnnl::algorithm::convolution_direct, memory::desc(s.Src(), dt::f32, src_tag),
      memory::desc(s.Wei(), dt::f32, tag::any), memory::desc(s.Dst(), dt::f32, dst_tag),
      s.Strides(), s.PadL(), s.PadR(), attr);
}

// Forward: with every layout left to oneDNN (`any`) it picks its brgemm convolution on
// NHWC, which measured about 25-30 % slower here (VGG shapes, 32x32, batch 64, AVX-512)
// than its direct jit convolution on channel-blocked activations. So ask for the blocked
// layout where the channel counts allow it, and keep `any` if that lands on a reference
// kernel.
dnnl::convolution_forward::primitive_desc PreferredFwdDesc(const dnnl::engine &eng, const ConvShape &s) {
  const auto blocked = BlockedActivationTag();
  if (blocked.first != tag::any) {
    const tag src_tag = s.c % blocked.second == 0 ? blocked.first : tag::any;
    const tag dst_tag = s.o % blocked.second == 0 ? blocked.first : tag::any;
    try {
      auto pd = FwdDesc(eng, s, dnnl::prop_kind::forward_inference, src_tag, dst_tag);
      if (std::strncmp(pd.impl_info_str(), "ref", 3) != 0) return pd;
    } catch (const dnnl::error &) {
    }
  }
  return FwdDesc(eng, s, dnnl::prop_kind::forward_inference, tag::any, tag::any);
}

class Engine {
 public:
  static Engine &Get() {
    static Engine *instance = new Engine();  // never destroyed: worker threads outlive exit
    return *instance;
  }

  std::mutex &Mutex() { return mu_; }

  void Forward(const ConvShape &s, const float *x, const float *w, float *y) {
    FwdPlan &p = FwdFor(s);
    memory src = Bind(p.src, const_cast<float *>(x), kSrc, true);
    memory wei = Bind(p.wei, const_cast<float *>(w), kWei, true);
    memory dst = BindOut(p.dst, y, kDst);
    memory scratch(ScratchDesc(p.scratch_bytes), eng_,
                   arena_.Get(kScratch, p.scratch_bytes ? p.scratch_bytes : 64));
    p.prim.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                             {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.dst, dst, y);
    stream_.wait();
  }

  void Backward(const ConvShape &s, const float *dy, const float *x, const float *w, float *dx,
                float *dw) {
    BwdPlan &p = BwdFor(s);
    memory scratch(ScratchDesc(p.scratch_bytes), eng_,
                   arena_.Get(kScratch, p.scratch_bytes ? p.scratch_bytes : 64));
    // backward data: dx = conv_bwd_data(dy, w)
    memory ddst_d = Bind(p.diff_dst_d, const_cast<float *>(dy), kDiffDst, true);
    memory wei = Bind(p.wei, const_cast<float *>(w), kWei, true);
    memory dsrc = BindOut(p.diff_src, dx, kDiffSrc);
    p.data_prim.execute(stream_, {{DNNL_ARG_DIFF_DST, ddst_d}, {DNNL_ARG_WEIGHTS, wei},
                                  {DNNL_ARG_DIFF_SRC, dsrc}, {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.diff_src, dsrc, dx);
    // backward weights: dw = conv_bwd_weights(x, dy); dy reused when the layouts agree
    memory ddst_w = p.shared_diff_dst ? ddst_d
                                      : Bind(p.diff_dst_w, const_cast<float *>(dy), kDst, true);
    memory src = Bind(p.src, const_cast<float *>(x), kSrc, true);
    memory dwei = BindOut(p.diff_wei, dw, kDiffWei);
    p.weights_prim.execute(stream_, {{DNNL_ARG_DIFF_DST, ddst_w}, {DNNL_ARG_SRC, src},
                                     {DNNL_ARG_DIFF_WEIGHTS, dwei}, {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.diff_wei, dwei, dw);
    stream_.wait();
  }

 private:
  Engine()
      : eng_(dnnl::engine::kind::cpu, 0),
        nthreads_(DefaultThreads()),
        pool_(nthreads_),
        stream_(dnnl::threadpool_interop::make_stream(eng_, &pool_)) {}

  memory::desc ScratchDesc(size_t bytes) const {
    return memory::desc({static_cast<memory::dim>(bytes)}, dt::u8, tag::x);
  }

  // Memory holding the operand in the primitive's layout; reorders the plain input in.
  memory Bind(const Operand &op, float *plain_ptr, int slot, bool reorder_in) {
    if (!op.needs_reorder) return memory(op.plain, eng_, plain_ptr);
    memory inner(op.inner, eng_, arena_.Get(slot, op.inner.get_size()));
    if (reorder_in) {
      memory plain(op.plain, eng_, plain_ptr);
      op.to_inner.execute(stream_, plain, inner);
    }
    return inner;
  }
  memory BindOut(const Operand &op, float *plain_ptr, int slot) { return Bind(op, plain_ptr, slot, false); }
  void Finish(const Operand &op, memory inner, float *plain_ptr) {
    if (!op.needs_reorder) return;
    memory plain(op.plain, eng_, plain_ptr);
    op.to_plain.execute(stream_, inner, plain);
  }

  void Describe(const char *what, const ConvShape &s, const char *impl) {
    if (!Verbose()) return;
    std::fprintf(stderr, "fast_conv: %s n%ld c%ld h%ld w%ld o%ld k%ldx%ld pad%ld,%ld -> %s\n", what,
                 (long)s.n, (long)s.c, (long)s.h, (long)s.w, (long)s.o, (long)s.kh, (long)s.kw,
                 (long)s.pt, (long)s.pl, impl);
  }

  FwdPlan &FwdFor(const ConvShape &s) {
    auto it = fwd_.find(s);
    if (it != fwd_.end()) return *it->second;
    dnnl_threadpool_interop_set_max_concurrency(nthreads_);
    auto pd = PreferredFwdDesc(eng_, s);
    auto plan = std::make_unique<FwdPlan>();
    plan->prim = dnnl::convolution_forward(pd);
    plan->src = MakeOperand(eng_, s.Src(), tag::nchw, pd.src_desc(), true, false);
    plan->wei = MakeOperand(eng_, s.Wei(), tag::oihw, pd.weights_desc(), true, false);
    plan->dst = MakeOperand(eng_, s.Dst(), tag::nchw, pd.dst_desc(), false, true);
    plan->scratch_bytes = pd.scratchpad_desc().get_size();
    Describe("forward", s, pd.impl_info_str());
    return *fwd_.emplace(s, std::move(plan)).first->second;
  }

  BwdPlan &BwdFor(const ConvShape &s) {
    auto it = bwd_.find(s);
    if (it != bwd_.end()) return *it->second;
    dnnl_threadpool_interop_set_max_concurrency(nthreads_);
    auto hint = FwdDesc(eng_, s, dnnl::prop_kind::forward_training, tag::any, tag::any);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    memory::desc any_src(s.Src(), dt::f32, tag::any), any_wei(s.Wei(), dt::f32, tag::any),
        any_dst(s.Dst(), dt::f32, tag::any);
    dnnl::convolution_backward_data::primitive_desc dpd(
        eng_, dnnl::algorithm::convolution_direct, any_src, any_wei, any_dst, s.Strides(), s.PadL(),
        s.PadR(), hint, attr);
    dnnl::convolution_backward_weights::primitive_desc wpd(
        eng_, dnnl::algorithm::convolution_direct, any_src, any_wei, any_dst, s.Strides(), s.PadL(),
        s.PadR(), hint, attr);
    auto plan = std::make_unique<BwdPlan>();
    plan->data_prim = dnnl::convolution_backward_data(dpd);
    plan->weights_prim = dnnl::convolution_backward_weights(wpd);
    plan->diff_dst_d = MakeOperand(eng_, s.Dst(), tag::nchw, dpd.diff_dst_desc(), true, false);
    plan->diff_dst_w = MakeOperand(eng_, s.Dst(), tag::nchw, wpd.diff_dst_desc(), true, false);
    plan->shared_diff_dst = dpd.diff_dst_desc() == wpd.diff_dst_desc();
    plan->wei = MakeOperand(eng_, s.Wei(), tag::oihw, dpd.weights_desc(), true, false);
    plan->diff_src = MakeOperand(eng_, s.Src(), tag::nchw, dpd.diff_src_desc(), false, true);
    plan->src = MakeOperand(eng_, s.Src(), tag::nchw, wpd.src_desc(), true, false);
    plan->diff_wei = MakeOperand(eng_, s.Wei(), tag::oihw, wpd.diff_weights_desc(), false, true);
    plan->scratch_bytes =
        std::max(dpd.scratchpad_desc().get_size(), wpd.scratchpad_desc().get_size());
    Describe("backward data", s, dpd.impl_info_str());
    Describe(plan->shared_diff_dst ? "backward weights (shared dy)" : "backward weights", s,
             wpd.impl_info_str());
    return *bwd_.emplace(s, std::move(plan)).first->second;
  }

  std::mutex mu_;
  dnnl::engine eng_;
  int nthreads_;
  ThreadPool pool_;
  dnnl::stream stream_;
  Arena arena_;
  std::map<ConvShape, std::unique_ptr<FwdPlan>> fwd_;
  std::map<ConvShape, std::unique_ptr<BwdPlan>> bwd_;
};

// ---------------------------------------------------------------------------------------
// Argument checking shared by the exported kernels.

bool IsF32(const char *dtype) {
  return dtype != nullptr && (std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0);
}

void Fail(const char *kernel, const char *why) { std::fprintf(stderr, "fast_conv %s: %s\n", kernel, why); }

// x (N,C,H,W), w (O,C,KH,KW), y (N,O,OH,OW) -> shape with stride-1 padding, or false.
bool ShapeFrom(const int64_t *x, const int64_t *w, const int64_t *y, ConvShape *s) {
  if (w[1] != x[1] || y[0] != x[0] || y[1] != w[0]) return false;
  *s = ConvShape{x[0], x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3], 0, 0, 0, 0};
  int64_t th = s->oh - s->h + s->kh - 1, tw = s->ow - s->w + s->kw - 1;
  if (th < 0 || tw < 0) return false;
  s->pt = th / 2;
  s->pb = th - s->pt;
  s->pl = tw / 2;
  s->pr = tw - s->pl;
  return s->n > 0 && s->c > 0 && s->h > 0 && s->w > 0 && s->o > 0 && s->oh > 0 && s->ow > 0;
}

bool AllRank4F32(int nparam, int *ndims, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (ndims[i] != 4 || !IsF32(dtypes[i])) return false;
  return true;
}

}  // namespace

// y = conv(x, w)
FASTCONV_EXPORT int FastConvFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  if (nparam != 3 || !AllRank4F32(nparam, ndims, dtypes)) {
    Fail("FastConvFwd", "expects x, w, y as 4-D float32 tensors");
    return 1;
  }
  ConvShape s;
  if (!ShapeFrom(shapes[0], shapes[1], shapes[2], &s)) {
    Fail("FastConvFwd", "inconsistent shapes (only stride 1, one group, no dilation)");
    return 1;
  }
  try {
    Engine &e = Engine::Get();
    std::lock_guard<std::mutex> lock(e.Mutex());
    e.Forward(s, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
              static_cast<float *>(params[2]));
  } catch (const std::exception &ex) {
    Fail("FastConvFwd", ex.what());
    return 1;
  }
  return 0;
}

// dx, dw = conv_backward(dy, x, w)
FASTCONV_EXPORT int FastConvBwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  if (nparam != 5 || !AllRank4F32(nparam, ndims, dtypes)) {
    Fail("FastConvBwd", "expects dy, x, w, dx, dw as 4-D float32 tensors");
    return 1;
  }
  ConvShape s;
  if (!ShapeFrom(shapes[1], shapes[2], shapes[0], &s)) {
    Fail("FastConvBwd", "inconsistent shapes (only stride 1, one group, no dilation)");
    return 1;
  }
  try {
    Engine &e = Engine::Get();
    std::lock_guard<std::mutex> lock(e.Mutex());
    e.Backward(s, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
               static_cast<const float *>(params[2]), static_cast<float *>(params[3]),
               static_cast<float *>(params[4]));
  } catch (const std::exception &ex) {
    Fail("FastConvBwd", ex.what());
    return 1;
  }
  return 0;
}

// Version of the oneDNN actually loaded, for diagnostics: "3.10.1".
FASTCONV_EXPORT const char *FastConvOneDnnVersion() {
  static std::string v = [] {
    const dnnl_version_t *ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." + std::to_string(ver->patch);
  }();
  return v.c_str();
}
