// 2-D convolution (NCHW, float32, stride 1, no dilation, one group) for MindSpore CPU as
// "aot" custom operators, computed by oneDNN on the layouts it prefers (format_tag::any),
// so that oneDNN picks its direct jit kernels (jit:avx512_core / jit:avx2 on blocked
// layouts) instead of the im2col+GEMM path MindSpore uses on plain NCHW.
//
// Exported kernels (MindSpore aot signature, see help(mindspore.ops.Custom)):
//   FastConvFwd : inputs  x (N,C,H,W), w (O,C,KH,KW)          -> y (N,O,OH,OW)
//   FastConvBwd : inputs  dy (N,O,OH,OW), x (N,C,H,W), w     -> dx (N,C,H,W), dw (O,C,KH,KW)
// Inference chain on channel-blocked activations (the tensors keep their NCHW shape for
// MindSpore, but their bytes are in oneDNN's nChw16c / nChw8c layout, see FastBlockSize):
//   FastConvInferPlain   : x (N,C,H,W) plain, w, scale (O), shift (O) -> y blocked
//   FastConvInferBlocked : x blocked,         w, scale (O), shift (O) -> y blocked
//                          y = relu(conv(x, w) * scale + shift): BatchNorm (moving
//                          statistics) and bias folded into the weights and a bias
//   FastMaxPool2Blocked  : x blocked (N,C,H,W) -> y blocked (N,C,H/2,W/2), 2x2 stride 2
//   FastUnblock          : x blocked -> y plain NCHW
// Training chain on the same blocked layout (FastFeatures in training):
//   FastConvTrainFwdPlain / FastConvTrainFwdBlocked : x, w -> y blocked
//   FastConvTrainBwdPlain / FastConvTrainBwdBlocked : dy, x, w -> dx, dw
//                          (plain x is the network input: its dx is returned as zeros)
//   FastBnReluTrain      : y, gamma, beta, eps (1) -> z = relu(bn(y)), batch mean, biased var,
//                          ReLU workspace (uint8, FastBnWorkspaceBytes(N, C, H, W) bytes)
//   FastBnReluBwd        : dz, workspace, y, gamma, mean, var, eps -> dy, dgamma, dbeta
//   FastMaxPool2Train    : x -> y, workspace (uint8, y's shape)
//   FastMaxPool2Bwd      : dy, workspace -> dx
//   FastBlock            : x plain NCHW -> y blocked (the gradient of FastUnblock)
// Optimizer:
//   FastMomentumUpdate   : w_0..w_n-1, accum_0.., g_0.., lr_0.., wd (n), momentum (1) -> done (1)
//                          per parameter, in place and in one pass over memory:
//                          accum = momentum * accum + (g + wd * w); w -= lr * accum
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
#include <stdexcept>
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

// An operand whose tensor is in layout `outer` and whose primitive wants `inner`.
Operand OperandFor(const dnnl::engine &eng, const memory::desc &outer, const memory::desc &inner,
                   bool in, bool out) {
  Operand op;
  op.plain = outer;
  op.inner = inner;
  op.needs_reorder = !(outer == inner);
  if (op.needs_reorder) {
    if (in) op.to_inner = dnnl::reorder(dnnl::reorder::primitive_desc(eng, outer, eng, inner));
    if (out) op.to_plain = dnnl::reorder(dnnl::reorder::primitive_desc(eng, inner, eng, outer));
  }
  return op;
}

Operand MakeOperand(const dnnl::engine &eng, const memory::dims &dims, tag plain_tag,
                    const memory::desc &inner, bool in, bool out) {
  return OperandFor(eng, memory::desc(dims, dt::f32, plain_tag), inner, in, out);
}

// Whether oneDNN picked its reference (unoptimised) implementation.
bool IsReference(const char *impl) { return std::strncmp(impl, "ref", 3) == 0; }

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

struct InferPlan {
  dnnl::convolution_forward prim;
  Operand src, dst;
  memory::desc wei_plain, wei_inner, chan;
  dnnl::reorder wei_reorder;  // plain -> inner, scaled per output channel
  size_t scratch_bytes = 0;
};

struct TrainConvPlan {
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;  // blocked input only
  dnnl::convolution_backward_weights bwd_weights;
  // Operands: "plain" is the layout of the MindSpore tensor (blocked activations, NCHW for
  // the network input, OIHW weights), "inner" the primitive's; they differ only where the
  // preferred blocked layout would have landed on a reference kernel.
  Operand src_f, wei_f, dst_f;                // forward
  Operand ddst_d, wei_d, dsrc_d;              // backward data
  Operand src_w, ddst_w, diff_wei;            // backward weights
  size_t scratch_bytes = 0;
};

struct BnPlan {
  dnnl::batch_normalization_forward fwd;
  dnnl::batch_normalization_backward bwd;
  memory::desc data, chan, ws;
  size_t scratch_bytes = 0;
};

struct TrainPoolPlan {
  dnnl::pooling_forward fwd;
  dnnl::pooling_backward bwd;
  memory::desc src, dst, ws;
  size_t scratch_bytes = 0;
};

struct PoolPlan {
  dnnl::pooling_forward prim;
  memory::desc src, dst;
  size_t scratch_bytes = 0;
};

struct UnblockPlan {
  dnnl::reorder prim, to_blocked;
  memory::desc blocked, plain;
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
      if (!IsReference(pd.impl_info_str())) return pd;
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

  // Primitives built on a reference (unoptimised) kernel so far: a test keeps this at 0.
  int ReferenceKernels() const { return reference_kernels_; }

  // Runs fn(i) for i in [0, n) on the engine's threads.
  void ParallelFor(int n, const std::function<void(int)> &fn) {
    pool_.parallel_for(n, [&](int i, int) { fn(i); });
  }

  void Forward(const ConvShape &s, const float *x, const float *w, float *y) {
    FwdPlan &p = FwdFor(s);
    memory src = Bind(p.src, const_cast<float *>(x), kSrc, true);
    memory wei = Bind(p.wei, const_cast<float *>(w), kWei, true);
    memory dst = BindOut(p.dst, y, kDst);
    memory scratch = Scratch(p.scratch_bytes);
    p.prim.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                             {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.dst, dst, y);
    stream_.wait();
  }

  // ---- training chain
  void TrainConvFwd(const ConvShape &s, bool x_blocked, const float *x, const float *w, float *y) {
    TrainConvPlan &p = TrainConvFor(s, x_blocked);
    memory src = Bind(p.src_f, const_cast<float *>(x), kSrc, true);
    memory wei = Bind(p.wei_f, const_cast<float *>(w), kWei, true);
    memory dst = BindOut(p.dst_f, y, kDst);
    memory scratch = Scratch(p.scratch_bytes);
    p.fwd.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                            {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.dst_f, dst, y);
    stream_.wait();
  }

  void TrainConvBwd(const ConvShape &s, bool x_blocked, const float *dy, const float *x, const float *w,
                    float *dx, float *dw) {
    TrainConvPlan &p = TrainConvFor(s, x_blocked);
    memory scratch = Scratch(p.scratch_bytes);
    if (x_blocked) {
      memory ddst = Bind(p.ddst_d, const_cast<float *>(dy), kDiffDst, true);
      memory wei = Bind(p.wei_d, const_cast<float *>(w), kWei, true);
      memory dsrc = BindOut(p.dsrc_d, dx, kDiffSrc);
      p.bwd_data.execute(stream_, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wei},
                                   {DNNL_ARG_DIFF_SRC, dsrc}, {DNNL_ARG_SCRATCHPAD, scratch}});
      Finish(p.dsrc_d, dsrc, dx);
    } else {
      std::memset(dx, 0, static_cast<size_t>(s.n * s.c * s.h * s.w) * sizeof(float));
    }
    memory ddst = Bind(p.ddst_w, const_cast<float *>(dy), kDst, true);
    memory src = Bind(p.src_w, const_cast<float *>(x), kSrc, true);
    memory dwei = BindOut(p.diff_wei, dw, kDiffWei);
    p.bwd_weights.execute(stream_, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_SRC, src},
                                    {DNNL_ARG_DIFF_WEIGHTS, dwei}, {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.diff_wei, dwei, dw);
    stream_.wait();
  }

  void BnReluFwd(const memory::dims &dims, float eps, const float *y, const float *gamma,
                 const float *beta, float *z, float *mean, float *var, uint8_t *ws) {
    BnPlan &p = BnFor(dims, eps);
    memory scratch = Scratch(p.scratch_bytes);
    p.fwd.execute(stream_, {{DNNL_ARG_SRC, memory(p.data, eng_, const_cast<float *>(y))},
                            {DNNL_ARG_DST, memory(p.data, eng_, z)},
                            {DNNL_ARG_SCALE, memory(p.chan, eng_, const_cast<float *>(gamma))},
                            {DNNL_ARG_SHIFT, memory(p.chan, eng_, const_cast<float *>(beta))},
                            {DNNL_ARG_MEAN, memory(p.chan, eng_, mean)},
                            {DNNL_ARG_VARIANCE, memory(p.chan, eng_, var)},
                            {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, ws)},
                            {DNNL_ARG_SCRATCHPAD, scratch}});
    stream_.wait();
  }

  void BnReluBwd(const memory::dims &dims, float eps, const float *dz, const uint8_t *ws, const float *y,
                 const float *gamma, const float *mean, const float *var, float *dy, float *dgamma,
                 float *dbeta) {
    BnPlan &p = BnFor(dims, eps);
    memory scratch = Scratch(p.scratch_bytes);
    p.bwd.execute(stream_, {{DNNL_ARG_SRC, memory(p.data, eng_, const_cast<float *>(y))},
                            {DNNL_ARG_MEAN, memory(p.chan, eng_, const_cast<float *>(mean))},
                            {DNNL_ARG_VARIANCE, memory(p.chan, eng_, const_cast<float *>(var))},
                            {DNNL_ARG_DIFF_DST, memory(p.data, eng_, const_cast<float *>(dz))},
                            {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, const_cast<uint8_t *>(ws))},
                            {DNNL_ARG_SCALE, memory(p.chan, eng_, const_cast<float *>(gamma))},
                            {DNNL_ARG_DIFF_SRC, memory(p.data, eng_, dy)},
                            {DNNL_ARG_DIFF_SCALE, memory(p.chan, eng_, dgamma)},
                            {DNNL_ARG_DIFF_SHIFT, memory(p.chan, eng_, dbeta)},
                            {DNNL_ARG_SCRATCHPAD, scratch}});
    stream_.wait();
  }

  // Bytes of the ReLU workspace FastBnReluTrain returns for an (N, C, H, W) input.
  size_t BnWorkspaceBytes(const memory::dims &dims) { return BnFor(dims, 1e-5f).ws.get_size(); }

  void MaxPool2Fwd(const memory::dims &src_dims, const float *x, float *y, uint8_t *ws) {
    TrainPoolPlan &p = TrainPoolFor(src_dims);
    memory scratch = Scratch(p.scratch_bytes);
    p.fwd.execute(stream_, {{DNNL_ARG_SRC, memory(p.src, eng_, const_cast<float *>(x))},
                            {DNNL_ARG_DST, memory(p.dst, eng_, y)},
                            {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, ws)},
                            {DNNL_ARG_SCRATCHPAD, scratch}});
    stream_.wait();
  }

  void MaxPool2Bwd(const memory::dims &src_dims, const float *dy, const uint8_t *ws, float *dx) {
    TrainPoolPlan &p = TrainPoolFor(src_dims);
    memory scratch = Scratch(p.scratch_bytes);
    p.bwd.execute(stream_, {{DNNL_ARG_DIFF_DST, memory(p.dst, eng_, const_cast<float *>(dy))},
                            {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, const_cast<uint8_t *>(ws))},
                            {DNNL_ARG_DIFF_SRC, memory(p.src, eng_, dx)},
                            {DNNL_ARG_SCRATCHPAD, scratch}});
    stream_.wait();
  }

  // Plain NCHW -> blocked.
  void Block(const memory::dims &dims, const float *x, float *y) {
    UnblockPlan &p = UnblockFor(dims);
    memory src(p.plain, eng_, const_cast<float *>(x)), dst(p.blocked, eng_, y);
    p.to_blocked.execute(stream_, src, dst);
    stream_.wait();
  }

  // y (blocked) = relu(conv(x, w * scale[o]) + shift); x plain or blocked.
  void Infer(const ConvShape &s, bool x_blocked, const float *x, const float *w, const float *scale,
             const float *shift, float *y) {
    InferPlan &p = InferFor(s, x_blocked);
    memory src = Bind(p.src, const_cast<float *>(x), kSrc, true);
    memory wei_plain(p.wei_plain, eng_, const_cast<float *>(w));
    memory wei(p.wei_inner, eng_, arena_.Get(kWei, p.wei_inner.get_size()));
    memory scales(p.chan, eng_, const_cast<float *>(scale));
    p.wei_reorder.execute(stream_, {{DNNL_ARG_FROM, wei_plain}, {DNNL_ARG_TO, wei},
                                    {DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, scales}});
    memory bias(p.chan, eng_, const_cast<float *>(shift));
    memory dst = BindOut(p.dst, y, kDst);
    memory scratch = Scratch(p.scratch_bytes);
    p.prim.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_BIAS, bias},
                             {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.dst, dst, y);
    stream_.wait();
  }

  // 2x2 stride-2 max pooling on blocked activations.
  void MaxPool2(const memory::dims &src_dims, const float *x, float *y) {
    PoolPlan &p = PoolFor(src_dims);
    memory src(p.src, eng_, const_cast<float *>(x));
    memory dst(p.dst, eng_, y);
    memory scratch = Scratch(p.scratch_bytes);
    p.prim.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    stream_.wait();
  }

  // Blocked -> plain NCHW.
  void Unblock(const memory::dims &dims, const float *x, float *y) {
    UnblockPlan &p = UnblockFor(dims);
    memory src(p.blocked, eng_, const_cast<float *>(x));
    memory dst(p.plain, eng_, y);
    p.prim.execute(stream_, src, dst);
    stream_.wait();
  }

  // Channel block of the blocked layout (16 with AVX-512, 8 with AVX2), 0 if none.
  static int BlockSize() {
    const auto b = BlockedActivationTag();
    return b.first == tag::any ? 0 : static_cast<int>(b.second);
  }

  void Backward(const ConvShape &s, const float *dy, const float *x, const float *w, float *dx,
                float *dw) {
    BwdPlan &p = BwdFor(s);
    memory scratch = Scratch(p.scratch_bytes);
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
    if (IsReference(impl)) ++reference_kernels_;
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

  memory::desc BlockedDesc(const memory::dims &dims) const {
    const auto b = BlockedActivationTag();
    if (b.first == tag::any || dims[1] % b.second != 0)
      throw std::runtime_error("channel count not a multiple of the activation block");
    return memory::desc(dims, dt::f32, b.first);
  }

  memory Scratch(size_t bytes) {
    return memory(ScratchDesc(bytes), eng_, arena_.Get(kScratch, bytes ? bytes : 64));
  }

  // Builds make(src, dst) with the preferred layouts; where that lands on a reference
  // kernel (for instance backward weights on 2x2 images with AVX2 blocks), with `any`.
  template <typename Make>
  auto Preferring(const memory::desc &src, const memory::desc &dst, const memory::desc &any_src,
                  const memory::desc &any_dst, Make make) -> decltype(make(src, dst)) {
    auto pd = make(src, dst);
    if (!IsReference(pd.impl_info_str())) return pd;
    auto other = make(any_src, any_dst);
    return IsReference(other.impl_info_str()) ? pd : other;
  }

  TrainConvPlan &TrainConvFor(const ConvShape &s, bool x_blocked) {
    auto &cache = x_blocked ? train_blocked_ : train_plain_;
    auto it = cache.find(s);
    if (it != cache.end()) return *it->second;
    dnnl_threadpool_interop_set_max_concurrency(nthreads_);
    const memory::desc dst = BlockedDesc(s.Dst());
    const memory::desc x = x_blocked ? BlockedDesc(s.Src()) : memory::desc(s.Src(), dt::f32, tag::nchw);
    const memory::desc any_src(s.Src(), dt::f32, tag::any), any_dst(s.Dst(), dt::f32, tag::any);
    const memory::desc src_pref = x_blocked ? x : any_src;
    const memory::desc any_wei(s.Wei(), dt::f32, tag::any);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const auto direct = dnnl::algorithm::convolution_direct;
    auto fpd = Preferring(src_pref, dst, any_src, any_dst, [&](const memory::desc &a, const memory::desc &b) {
      return dnnl::convolution_forward::primitive_desc(eng_, dnnl::prop_kind::forward_training, direct, a,
                                                       any_wei, b, s.Strides(), s.PadL(), s.PadR(), attr);
    });
    auto wpd = Preferring(src_pref, dst, any_src, any_dst, [&](const memory::desc &a, const memory::desc &b) {
      return dnnl::convolution_backward_weights::primitive_desc(eng_, direct, a, any_wei, b, s.Strides(),
                                                                s.PadL(), s.PadR(), fpd, attr);
    });
    auto plan = std::make_unique<TrainConvPlan>();
    plan->fwd = dnnl::convolution_forward(fpd);
    plan->bwd_weights = dnnl::convolution_backward_weights(wpd);
    plan->src_f = OperandFor(eng_, x, fpd.src_desc(), true, false);
    plan->wei_f = MakeOperand(eng_, s.Wei(), tag::oihw, fpd.weights_desc(), true, false);
    plan->dst_f = OperandFor(eng_, dst, fpd.dst_desc(), false, true);
    plan->src_w = OperandFor(eng_, x, wpd.src_desc(), true, false);
    plan->ddst_w = OperandFor(eng_, dst, wpd.diff_dst_desc(), true, false);
    plan->diff_wei = MakeOperand(eng_, s.Wei(), tag::oihw, wpd.diff_weights_desc(), false, true);
    size_t scratch = std::max(fpd.scratchpad_desc().get_size(), wpd.scratchpad_desc().get_size());
    if (x_blocked) {
      auto dpd = Preferring(x, dst, any_src, any_dst, [&](const memory::desc &a, const memory::desc &b) {
        return dnnl::convolution_backward_data::primitive_desc(eng_, direct, a, any_wei, b, s.Strides(),
                                                               s.PadL(), s.PadR(), fpd, attr);
      });
      plan->bwd_data = dnnl::convolution_backward_data(dpd);
      plan->ddst_d = OperandFor(eng_, dst, dpd.diff_dst_desc(), true, false);
      plan->wei_d = MakeOperand(eng_, s.Wei(), tag::oihw, dpd.weights_desc(), true, false);
      plan->dsrc_d = OperandFor(eng_, x, dpd.diff_src_desc(), false, true);
      scratch = std::max(scratch, dpd.scratchpad_desc().get_size());
      Describe("training backward data", s, dpd.impl_info_str());
    }
    plan->scratch_bytes = scratch;
    Describe(x_blocked ? "training forward (blocked in)" : "training forward (plain in)", s, fpd.impl_info_str());
    Describe("training backward weights", s, wpd.impl_info_str());
    return *cache.emplace(s, std::move(plan)).first->second;
  }

  BnPlan &BnFor(const memory::dims &dims, float eps) {
    auto key = std::make_pair(dims, eps);
    auto it = bns_.find(key);
    if (it != bns_.end()) return *it->second;
    dnnl_threadpool_interop_set_max_concurrency(nthreads_);
    auto plan = std::make_unique<BnPlan>();
    plan->data = BlockedDesc(dims);
    plan->chan = memory::desc({dims[1]}, dt::f32, tag::a);
    const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift |
                       dnnl::normalization_flags::fuse_norm_relu;
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::batch_normalization_forward::primitive_desc fpd(
        eng_, dnnl::prop_kind::forward_training, plan->data, plan->data, eps, flags, attr);
    dnnl::batch_normalization_backward::primitive_desc bpd(
        eng_, dnnl::prop_kind::backward, plan->data, plan->data, plan->data, eps, flags, fpd, attr);
    plan->fwd = dnnl::batch_normalization_forward(fpd);
    plan->bwd = dnnl::batch_normalization_backward(bpd);
    plan->ws = fpd.workspace_desc();
    plan->scratch_bytes = std::max(fpd.scratchpad_desc().get_size(), bpd.scratchpad_desc().get_size());
    reference_kernels_ += IsReference(fpd.impl_info_str()) + IsReference(bpd.impl_info_str());
    if (Verbose())
      std::fprintf(stderr, "fast_conv: batch norm + relu %ldx%ldx%ldx%ld -> %s / %s, workspace %zu bytes\n",
                   (long)dims[0], (long)dims[1], (long)dims[2], (long)dims[3], fpd.impl_info_str(),
                   bpd.impl_info_str(), plan->ws.get_size());
    return *bns_.emplace(key, std::move(plan)).first->second;
  }

  TrainPoolPlan &TrainPoolFor(const memory::dims &src_dims) {
    auto it = train_pools_.find(src_dims);
    if (it != train_pools_.end()) return *it->second;
    dnnl_threadpool_interop_set_max_concurrency(nthreads_);
    memory::dims dst_dims = {src_dims[0], src_dims[1], src_dims[2] / 2, src_dims[3] / 2};
    auto plan = std::make_unique<TrainPoolPlan>();
    plan->src = BlockedDesc(src_dims);
    plan->dst = BlockedDesc(dst_dims);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::pooling_forward::primitive_desc fpd(
        eng_, dnnl::prop_kind::forward_training, dnnl::algorithm::pooling_max, plan->src, plan->dst,
        {2, 2}, {2, 2}, {0, 0}, {0, 0}, {0, 0}, attr);
    dnnl::pooling_backward::primitive_desc bpd(
        eng_, dnnl::algorithm::pooling_max, plan->src, plan->dst, {2, 2}, {2, 2}, {0, 0}, {0, 0},
        {0, 0}, fpd, attr);
    plan->ws = fpd.workspace_desc();
    const size_t expected = static_cast<size_t>(dst_dims[0] * dst_dims[1] * dst_dims[2] * dst_dims[3]);
    if (plan->ws.get_size() != expected)
      throw std::runtime_error("max-pooling workspace is not one byte per output element");
    plan->fwd = dnnl::pooling_forward(fpd);
    plan->bwd = dnnl::pooling_backward(bpd);
    reference_kernels_ += IsReference(fpd.impl_info_str()) + IsReference(bpd.impl_info_str());
    plan->scratch_bytes = std::max(fpd.scratchpad_desc().get_size(), bpd.scratchpad_desc().get_size());
    return *train_pools_.emplace(src_dims, std::move(plan)).first->second;
  }

  InferPlan &InferFor(const ConvShape &s, bool x_blocked) {
    auto &cache = x_blocked ? infer_blocked_ : infer_plain_;
    auto it = cache.find(s);
    if (it != cache.end()) return *it->second;
    dnnl_threadpool_interop_set_max_concurrency(nthreads_);
    const memory::desc dst = BlockedDesc(s.Dst());
    const memory::desc x = x_blocked ? BlockedDesc(s.Src()) : memory::desc(s.Src(), dt::f32, tag::nchw);
    const memory::desc any_src(s.Src(), dt::f32, tag::any), any_dst(s.Dst(), dt::f32, tag::any);
    auto plan = std::make_unique<InferPlan>();
    plan->chan = memory::desc({s.o}, dt::f32, tag::a);
    dnnl::post_ops po;
    po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    attr.set_post_ops(po);
    auto pd = Preferring(x_blocked ? x : any_src, dst, any_src, any_dst,
                         [&](const memory::desc &a, const memory::desc &b) {
      return dnnl::convolution_forward::primitive_desc(
          eng_, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, a,
          memory::desc(s.Wei(), dt::f32, tag::any), plan->chan, b, s.Strides(), s.PadL(), s.PadR(), attr);
    });
    plan->prim = dnnl::convolution_forward(pd);
    plan->src = OperandFor(eng_, x, pd.src_desc(), true, false);
    plan->dst = OperandFor(eng_, dst, pd.dst_desc(), false, true);
    plan->wei_plain = memory::desc(s.Wei(), dt::f32, tag::oihw);
    plan->wei_inner = pd.weights_desc();
    dnnl::primitive_attr scaled;
    scaled.set_scales_mask(DNNL_ARG_SRC, 1);  // one scale per output channel (dim 0)
    plan->wei_reorder = dnnl::reorder(
        dnnl::reorder::primitive_desc(eng_, plan->wei_plain, eng_, plan->wei_inner, scaled));
    plan->scratch_bytes = pd.scratchpad_desc().get_size();
    Describe(x_blocked ? "inference (blocked in)" : "inference (plain in)", s, pd.impl_info_str());
    return *cache.emplace(s, std::move(plan)).first->second;
  }

  PoolPlan &PoolFor(const memory::dims &src_dims) {
    auto it = pools_.find(src_dims);
    if (it != pools_.end()) return *it->second;
    dnnl_threadpool_interop_set_max_concurrency(nthreads_);
    memory::dims dst_dims = {src_dims[0], src_dims[1], src_dims[2] / 2, src_dims[3] / 2};
    auto plan = std::make_unique<PoolPlan>();
    plan->src = BlockedDesc(src_dims);
    plan->dst = BlockedDesc(dst_dims);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::pooling_forward::primitive_desc pd(
        eng_, dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_max, plan->src,
        plan->dst, {2, 2}, {2, 2}, {0, 0}, {0, 0}, {0, 0}, attr);
    plan->prim = dnnl::pooling_forward(pd);
    plan->scratch_bytes = pd.scratchpad_desc().get_size();
    return *pools_.emplace(src_dims, std::move(plan)).first->second;
  }

  UnblockPlan &UnblockFor(const memory::dims &dims) {
    auto it = unblock_.find(dims);
    if (it != unblock_.end()) return *it->second;
    dnnl_threadpool_interop_set_max_concurrency(nthreads_);
    auto plan = std::make_unique<UnblockPlan>();
    plan->blocked = BlockedDesc(dims);
    plan->plain = memory::desc(dims, dt::f32, tag::nchw);
    plan->prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng_, plan->blocked, eng_, plan->plain));
    plan->to_blocked = dnnl::reorder(dnnl::reorder::primitive_desc(eng_, plan->plain, eng_, plan->blocked));
    return *unblock_.emplace(dims, std::move(plan)).first->second;
  }

  std::mutex mu_;
  dnnl::engine eng_;
  int nthreads_;
  ThreadPool pool_;
  dnnl::stream stream_;
  Arena arena_;
  std::map<ConvShape, std::unique_ptr<FwdPlan>> fwd_;
  std::map<ConvShape, std::unique_ptr<BwdPlan>> bwd_;
  std::map<ConvShape, std::unique_ptr<InferPlan>> infer_plain_, infer_blocked_;
  std::map<memory::dims, std::unique_ptr<PoolPlan>> pools_;
  std::map<memory::dims, std::unique_ptr<UnblockPlan>> unblock_;
  std::map<ConvShape, std::unique_ptr<TrainConvPlan>> train_plain_, train_blocked_;
  int reference_kernels_ = 0;
  std::map<std::pair<memory::dims, float>, std::unique_ptr<BnPlan>> bns_;
  std::map<memory::dims, std::unique_ptr<TrainPoolPlan>> train_pools_;
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

// Runs fn under the engine's lock; returns the kernel status.
template <typename Fn>
int Guarded(const char *name, Fn fn) {
  try {
    Engine &e = Engine::Get();
    std::lock_guard<std::mutex> lock(e.Mutex());
    fn(e);
  } catch (const std::exception &ex) {
    Fail(name, ex.what());
    return 1;
  }
  return 0;
}

memory::dims Dims4(const int64_t *shape) { return {shape[0], shape[1], shape[2], shape[3]}; }

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
  return Guarded("FastConvFwd", [&](Engine &e) {
    e.Forward(s, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
              static_cast<float *>(params[2]));
  });
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
  return Guarded("FastConvBwd", [&](Engine &e) {
    e.Backward(s, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
               static_cast<const float *>(params[2]), static_cast<float *>(params[3]),
               static_cast<float *>(params[4]));
  });
}

namespace {

// x, w, scale, shift, y: y = relu(conv(x, w * scale) + shift), y blocked.
int InferKernel(const char *name, bool x_blocked, int nparam, void **params, int *ndims,
                int64_t **shapes, const char **dtypes) {
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 1 || ndims[3] != 1 || ndims[4] != 4) {
    Fail(name, "expects x, w (4-D), scale, shift (1-D), y (4-D)");
    return 1;
  }
  for (int i = 0; i < nparam; ++i)
    if (!IsF32(dtypes[i])) {
      Fail(name, "expects float32 tensors");
      return 1;
    }
  ConvShape s;
  if (!ShapeFrom(shapes[0], shapes[1], shapes[4], &s) || shapes[2][0] != s.o || shapes[3][0] != s.o) {
    Fail(name, "inconsistent shapes (only stride 1, one group, no dilation)");
    return 1;
  }
  return Guarded(name, [&](Engine &e) {
    e.Infer(s, x_blocked, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
            static_cast<const float *>(params[2]), static_cast<const float *>(params[3]),
            static_cast<float *>(params[4]));
  });
}

}  // namespace

FASTCONV_EXPORT int FastConvInferPlain(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *stream, void *extra) {
  return InferKernel("FastConvInferPlain", false, nparam, params, ndims, shapes, dtypes);
}

FASTCONV_EXPORT int FastConvInferBlocked(int nparam, void **params, int *ndims, int64_t **shapes,
                                         const char **dtypes, void *stream, void *extra) {
  return InferKernel("FastConvInferBlocked", true, nparam, params, ndims, shapes, dtypes);
}

// y = maxpool2x2(x), both blocked.
FASTCONV_EXPORT int FastMaxPool2Blocked(int nparam, void **params, int *ndims, int64_t **shapes,
                                        const char **dtypes, void *stream, void *extra) {
  if (nparam != 2 || !AllRank4F32(nparam, ndims, dtypes)) {
    Fail("FastMaxPool2Blocked", "expects x, y as 4-D float32 tensors");
    return 1;
  }
  const int64_t *x = shapes[0], *y = shapes[1];
  if (y[0] != x[0] || y[1] != x[1] || x[2] != 2 * y[2] || x[3] != 2 * y[3] || y[2] < 1 || y[3] < 1) {
    Fail("FastMaxPool2Blocked", "expects even H, W and y = (N, C, H/2, W/2)");
    return 1;
  }
  return Guarded("FastMaxPool2Blocked", [&](Engine &e) {
    e.MaxPool2(Dims4(x), static_cast<const float *>(params[0]), static_cast<float *>(params[1]));
  });
}

// y (plain NCHW) = x (blocked), same shape.
FASTCONV_EXPORT int FastUnblock(int nparam, void **params, int *ndims, int64_t **shapes,
                                const char **dtypes, void *stream, void *extra) {
  if (nparam != 2 || !AllRank4F32(nparam, ndims, dtypes) ||
      !std::equal(shapes[0], shapes[0] + 4, shapes[1])) {
    Fail("FastUnblock", "expects x, y as 4-D float32 tensors of one shape");
    return 1;
  }
  return Guarded("FastUnblock", [&](Engine &e) {
    e.Unblock(Dims4(shapes[0]), static_cast<const float *>(params[0]), static_cast<float *>(params[1]));
  });
}

namespace {

bool IsU8(const char *dtype) { return dtype != nullptr && std::strcmp(dtype, "uint8") == 0; }

int TrainFwdKernel(const char *name, bool x_blocked, int nparam, void **params, int *ndims,
                   int64_t **shapes, const char **dtypes) {
  ConvShape s;
  if (nparam != 3 || !AllRank4F32(nparam, ndims, dtypes) || !ShapeFrom(shapes[0], shapes[1], shapes[2], &s)) {
    Fail(name, "expects x, w, y as consistent 4-D float32 tensors");
    return 1;
  }
  return Guarded(name, [&](Engine &e) {
    e.TrainConvFwd(s, x_blocked, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                   static_cast<float *>(params[2]));
  });
}

int TrainBwdKernel(const char *name, bool x_blocked, int nparam, void **params, int *ndims,
                   int64_t **shapes, const char **dtypes) {
  ConvShape s;
  if (nparam != 5 || !AllRank4F32(nparam, ndims, dtypes) || !ShapeFrom(shapes[1], shapes[2], shapes[0], &s)) {
    Fail(name, "expects dy, x, w, dx, dw as consistent 4-D float32 tensors");
    return 1;
  }
  return Guarded(name, [&](Engine &e) {
    e.TrainConvBwd(s, x_blocked, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                   static_cast<const float *>(params[2]), static_cast<float *>(params[3]),
                   static_cast<float *>(params[4]));
  });
}

// The per-channel vectors of the batch-norm kernels: 1-D float32 of C elements.
bool ChannelVectors(const int *ndims, int64_t **shapes, const char **dtypes, int first, int count, int64_t c) {
  for (int i = first; i < first + count; ++i)
    if (ndims[i] != 1 || shapes[i][0] != c || !IsF32(dtypes[i])) return false;
  return true;
}

}  // namespace

FASTCONV_EXPORT int FastConvTrainFwdPlain(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  return TrainFwdKernel("FastConvTrainFwdPlain", false, nparam, params, ndims, shapes, dtypes);
}

FASTCONV_EXPORT int FastConvTrainFwdBlocked(int nparam, void **params, int *ndims, int64_t **shapes,
                                            const char **dtypes, void *stream, void *extra) {
  return TrainFwdKernel("FastConvTrainFwdBlocked", true, nparam, params, ndims, shapes, dtypes);
}

FASTCONV_EXPORT int FastConvTrainBwdPlain(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  return TrainBwdKernel("FastConvTrainBwdPlain", false, nparam, params, ndims, shapes, dtypes);
}

FASTCONV_EXPORT int FastConvTrainBwdBlocked(int nparam, void **params, int *ndims, int64_t **shapes,
                                            const char **dtypes, void *stream, void *extra) {
  return TrainBwdKernel("FastConvTrainBwdBlocked", true, nparam, params, ndims, shapes, dtypes);
}

// y, gamma, beta, eps -> z, mean, var, workspace
FASTCONV_EXPORT int FastBnReluTrain(int nparam, void **params, int *ndims, int64_t **shapes,
                                    const char **dtypes, void *stream, void *extra) {
  const char *name = "FastBnReluTrain";
  if (nparam != 8 || ndims[0] != 4 || ndims[4] != 4 || !IsF32(dtypes[0]) || !IsF32(dtypes[4]) ||
      !std::equal(shapes[0], shapes[0] + 4, shapes[4]) || !ChannelVectors(ndims, shapes, dtypes, 1, 2, shapes[0][1]) ||
      !ChannelVectors(ndims, shapes, dtypes, 3, 1, 1) || !ChannelVectors(ndims, shapes, dtypes, 5, 2, shapes[0][1]) ||
      ndims[7] != 1 || !IsU8(dtypes[7])) {
    Fail(name, "expects y (4-D), gamma, beta (C), eps (1), z (y's shape), mean, var (C) float32, workspace uint8");
    return 1;
  }
  const float eps = *static_cast<const float *>(params[3]);
  return Guarded(name, [&](Engine &e) {
    if (static_cast<size_t>(shapes[7][0]) != e.BnWorkspaceBytes(Dims4(shapes[0])))
      throw std::runtime_error("workspace size differs from FastBnWorkspaceBytes");
    e.BnReluFwd(Dims4(shapes[0]), eps, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                static_cast<const float *>(params[2]), static_cast<float *>(params[4]),
                static_cast<float *>(params[5]), static_cast<float *>(params[6]), static_cast<uint8_t *>(params[7]));
  });
}

// dz, workspace, y, gamma, mean, var, eps -> dy, dgamma, dbeta
FASTCONV_EXPORT int FastBnReluBwd(int nparam, void **params, int *ndims, int64_t **shapes,
                                  const char **dtypes, void *stream, void *extra) {
  const char *name = "FastBnReluBwd";
  bool ok = nparam == 10 && ndims[1] == 1 && IsU8(dtypes[1]);
  for (int i : {0, 2, 7})
    ok = ok && ndims[i] == 4 && IsF32(dtypes[i]) && std::equal(shapes[0], shapes[0] + 4, shapes[i]);
  ok = ok && ChannelVectors(ndims, shapes, dtypes, 3, 3, shapes[0][1]) &&
       ChannelVectors(ndims, shapes, dtypes, 6, 1, 1) && ChannelVectors(ndims, shapes, dtypes, 8, 2, shapes[0][1]);
  if (!ok) {
    Fail(name, "expects dz (4-D), workspace (uint8), y (4-D), gamma, mean, var (C), eps (1), dy (4-D), dgamma, dbeta (C)");
    return 1;
  }
  const float eps = *static_cast<const float *>(params[6]);
  return Guarded(name, [&](Engine &e) {
    e.BnReluBwd(Dims4(shapes[0]), eps, static_cast<const float *>(params[0]), static_cast<const uint8_t *>(params[1]),
                static_cast<const float *>(params[2]), static_cast<const float *>(params[3]),
                static_cast<const float *>(params[4]), static_cast<const float *>(params[5]),
                static_cast<float *>(params[7]), static_cast<float *>(params[8]), static_cast<float *>(params[9]));
  });
}

// Number of oneDNN primitives the library built on reference kernels (0 when all is fast).
FASTCONV_EXPORT int FastReferenceKernels() {
  int count = 0;
  Guarded("FastReferenceKernels", [&](Engine &e) { count = e.ReferenceKernels(); });
  return count;
}

// Bytes of FastBnReluTrain's workspace for an (n, c, h, w) input; -1 on error.
FASTCONV_EXPORT int64_t FastBnWorkspaceBytes(int64_t n, int64_t c, int64_t h, int64_t w) {
  size_t bytes = 0;
  int status = Guarded("FastBnWorkspaceBytes", [&](Engine &e) { bytes = e.BnWorkspaceBytes({n, c, h, w}); });
  return status == 0 ? static_cast<int64_t>(bytes) : -1;
}

// x -> y, workspace
FASTCONV_EXPORT int FastMaxPool2Train(int nparam, void **params, int *ndims, int64_t **shapes,
                                      const char **dtypes, void *stream, void *extra) {
  const char *name = "FastMaxPool2Train";
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || !IsF32(dtypes[0]) ||
      !IsF32(dtypes[1]) || !IsU8(dtypes[2])) {
    Fail(name, "expects x, y (4-D float32), workspace (4-D uint8)");
    return 1;
  }
  const int64_t *x = shapes[0], *y = shapes[1];
  if (y[0] != x[0] || y[1] != x[1] || x[2] != 2 * y[2] || x[3] != 2 * y[3] || y[2] < 1 || y[3] < 1 ||
      !std::equal(y, y + 4, shapes[2])) {
    Fail(name, "expects even H, W and y, workspace = (N, C, H/2, W/2)");
    return 1;
  }
  return Guarded(name, [&](Engine &e) {
    e.MaxPool2Fwd(Dims4(x), static_cast<const float *>(params[0]), static_cast<float *>(params[1]),
                  static_cast<uint8_t *>(params[2]));
  });
}

// dy, workspace -> dx
FASTCONV_EXPORT int FastMaxPool2Bwd(int nparam, void **params, int *ndims, int64_t **shapes,
                                    const char **dtypes, void *stream, void *extra) {
  const char *name = "FastMaxPool2Bwd";
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || !IsF32(dtypes[0]) ||
      !IsU8(dtypes[1]) || !IsF32(dtypes[2])) {
    Fail(name, "expects dy (4-D float32), workspace (4-D uint8), dx (4-D float32)");
    return 1;
  }
  const int64_t *dy = shapes[0], *dx = shapes[2];
  if (dy[0] != dx[0] || dy[1] != dx[1] || dx[2] != 2 * dy[2] || dx[3] != 2 * dy[3] ||
      !std::equal(dy, dy + 4, shapes[1])) {
    Fail(name, "expects dx = (N, C, 2H, 2W) for dy, workspace = (N, C, H, W)");
    return 1;
  }
  return Guarded(name, [&](Engine &e) {
    e.MaxPool2Bwd(Dims4(dx), static_cast<const float *>(params[0]), static_cast<const uint8_t *>(params[1]),
                  static_cast<float *>(params[2]));
  });
}

// y (blocked) = x (plain NCHW), same shape.
FASTCONV_EXPORT int FastBlock(int nparam, void **params, int *ndims, int64_t **shapes,
                              const char **dtypes, void *stream, void *extra) {
  if (nparam != 2 || !AllRank4F32(nparam, ndims, dtypes) || !std::equal(shapes[0], shapes[0] + 4, shapes[1])) {
    Fail("FastBlock", "expects x, y as 4-D float32 tensors of one shape");
    return 1;
  }
  return Guarded("FastBlock", [&](Engine &e) {
    e.Block(Dims4(shapes[0]), static_cast<const float *>(params[0]), static_cast<float *>(params[1]));
  });
}

namespace {

// One pass of momentum SGD with weight decay over [begin, end) of one parameter.
__attribute__((target_clones("avx512f", "avx2", "default")))
void MomentumRange(float *w, float *accum, const float *g, float lr, float wd, float momentum,
                   int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float a = momentum * accum[i] + (g[i] + wd * w[i]);
    accum[i] = a;
    w[i] -= lr * a;
  }
}

float ScalarOf(const void *p) { return *static_cast<const float *>(p); }

bool IsScalarF32(int ndims, const int64_t *shape, const char *dtype) {
  if (!IsF32(dtype)) return false;
  int64_t n = 1;
  for (int d = 0; d < ndims; ++d) n *= shape[d];
  return n == 1;
}

}  // namespace

// Updates the parameters and momentum accumulators in place (MindSpore passes parameters
// by their own buffers); the output is a one-element flag (1.0) to order the step on.
FASTCONV_EXPORT int FastMomentumUpdate(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *stream, void *extra) {
  const char *name = "FastMomentumUpdate";
  if (nparam < 7 || (nparam - 3) % 4 != 0) {
    Fail(name, "expects n weights, n accumulators, n gradients, n learning rates, wd, momentum, flag");
    return 1;
  }
  const int n = (nparam - 3) / 4;
  struct Job {
    float *w, *accum;
    const float *g;
    float lr, wd;
    int64_t begin, end;
  };
  std::vector<Job> jobs;
  const int wd_at = 4 * n, momentum_at = 4 * n + 1, flag_at = 4 * n + 2;
  if (ndims[wd_at] != 1 || shapes[wd_at][0] != n || !IsF32(dtypes[wd_at]) ||
      !IsScalarF32(ndims[momentum_at], shapes[momentum_at], dtypes[momentum_at]) ||
      !IsScalarF32(ndims[flag_at], shapes[flag_at], dtypes[flag_at])) {
    Fail(name, "expects wd of n float32, a float32 momentum and flag");
    return 1;
  }
  const float *wd = static_cast<const float *>(params[wd_at]);
  const float momentum = ScalarOf(params[momentum_at]);
  constexpr int64_t kChunk = 1 << 16;
  for (int i = 0; i < n; ++i) {
    const int w = i, a = n + i, g = 2 * n + i, lr = 3 * n + i;
    if (!IsF32(dtypes[w]) || !IsF32(dtypes[a]) || !IsF32(dtypes[g]) || ndims[w] != ndims[a] ||
        ndims[w] != ndims[g] || !std::equal(shapes[w], shapes[w] + ndims[w], shapes[a]) ||
        !std::equal(shapes[w], shapes[w] + ndims[w], shapes[g]) ||
        !IsScalarF32(ndims[lr], shapes[lr], dtypes[lr])) {
      Fail(name, "weight, accumulator and gradient must be float32 of one shape, lr a float32 scalar");
      return 1;
    }
    int64_t size = 1;
    for (int d = 0; d < ndims[w]; ++d) size *= shapes[w][d];
    for (int64_t b = 0; b < size; b += kChunk)
      jobs.push_back({static_cast<float *>(params[w]), static_cast<float *>(params[a]),
                      static_cast<const float *>(params[g]), ScalarOf(params[lr]), wd[i], b,
                      std::min(size, b + kChunk)});
  }
  *static_cast<float *>(params[flag_at]) = 1.0f;
  return Guarded(name, [&](Engine &e) {
    e.ParallelFor(static_cast<int>(jobs.size()), [&](int j) {
      const Job &job = jobs[j];
      MomentumRange(job.w, job.accum, job.g, job.lr, job.wd, momentum, job.begin, job.end);
    });
  });
}

// Channel block of the layout the inference chain passes between layers; 0 if none.
FASTCONV_EXPORT int FastBlockSize() { return Engine::BlockSize(); }

// Version of the oneDNN actually loaded, for diagnostics: "3.10.1".
FASTCONV_EXPORT const char *FastConvOneDnnVersion() {
  static std::string v = [] {
    const dnnl_version_t *ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." + std::to_string(ver->patch);
  }();
  return v.c_str();
}
