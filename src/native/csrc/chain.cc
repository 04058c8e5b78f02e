// The rest of the blocked chain on oneDNN's channel-blocked layout: BatchNorm with its
// activation (training, with batch statistics: fused with ReLU, or followed by GELU), 2x2
// max pooling (training and inference), and the reorders between plain float32 NCHW and the
// blocked layout at the chain's ends. Activations are float32 or bfloat16 (`act`);
// BatchNorm's scale, shift, mean and variance are float32 whatever the activations (oneDNN
// computes the statistics in float32).
#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine.h"

namespace vgg_native {

// ---------------------------------------------------------------------------------------
// BatchNorm + activation (training): z = act(bn(y)), the batch mean and biased variance,
// and the workspace its gradient reads (ReLU's mask, or GELU's input); optionally with ghost
// batches (statistics per run of images, see engine.h).

namespace {

void *Mutable(const void *p) { return const_cast<void *>(p); }

const char *At(const void *p, size_t offset) { return static_cast<const char *>(p) + offset; }

// How a batch splits into runs of images with their own statistics (ghost batch
// normalisation): one run of N images unless 0 < ghost < N.
struct Runs {
  int64_t count;
  memory::dims dims;  // of one run
};

Runs RunsOf(const memory::dims &dims, int64_t ghost) {
  const int64_t n = dims[0];
  if (ghost <= 0 || ghost >= n) return {1, dims};
  if (n % ghost != 0)
    throw std::runtime_error("a batch of " + std::to_string(n) + " images is not a multiple of the ghost batch of " +
                             std::to_string(ghost));
  return {n / ghost, {ghost, dims[1], dims[2], dims[3]}};
}

// Byte offset of the runs' means in the workspace (then their variances): after one
// activation workspace per run, rounded up to 64 bytes.
size_t StatsOffset(size_t ws_bytes_per_run, int64_t runs) {
  return (ws_bytes_per_run * static_cast<size_t>(runs) + 63) / 64 * 64;
}

}  // namespace

void Engine::BnActFwd(const memory::dims &dims, dt act, Activation kind, float eps, int64_t ghost,
                      const void *y, const float *gamma, const float *beta, void *z, float *mean,
                      float *var, uint8_t *ws) {
  const Runs runs = RunsOf(dims, ghost);
  BnPlan &p = BnFor(runs.dims, eps, act, kind);
  const bool relu = kind == Activation::kRelu;
  const int64_t c = dims[1];
  const size_t step = p.data.get_size(), ws_step = p.ws.get_size();
  if (runs.count > 1 && step * static_cast<size_t>(runs.count) != BlockedDesc(dims, act).get_size())
    throw std::runtime_error("the activation layout does not keep each image's data together");
  float *run_mean = runs.count > 1 ? reinterpret_cast<float *>(ws + StatsOffset(ws_step, runs.count)) : mean;
  float *run_var = runs.count > 1 ? run_mean + runs.count * c : var;
  memory scratch = Scratch(p.scratch_bytes);
  for (int64_t k = 0; k < runs.count; ++k) {
    memory out(p.data, eng_, static_cast<char *>(z) + k * step);
    memory run_ws(p.ws, eng_, ws + k * ws_step);
    // ReLU: fused, z written by the BatchNorm; GELU: the BatchNorm writes the workspace,
    // from which the GELU writes z
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(p.data, eng_, Mutable(At(y, k * step)))},
        {DNNL_ARG_DST, relu ? out : run_ws},
        {DNNL_ARG_SCALE, memory(p.chan, eng_, Mutable(gamma))},
        {DNNL_ARG_SHIFT, memory(p.chan, eng_, Mutable(beta))},
        {DNNL_ARG_MEAN, memory(p.chan, eng_, run_mean + k * c)},
        {DNNL_ARG_VARIANCE, memory(p.chan, eng_, run_var + k * c)},
        {DNNL_ARG_SCRATCHPAD, scratch}};
    if (relu) args.insert({DNNL_ARG_WORKSPACE, run_ws});
    p.fwd.execute(stream_, args);
    if (!relu)
      p.act_fwd.execute(stream_, {{DNNL_ARG_SRC, run_ws}, {DNNL_ARG_DST, out}, {DNNL_ARG_SCRATCHPAD, scratch}});
    stream_.wait();
  }
  if (runs.count == 1) return;
  // the whole batch's mean and biased variance (runs of equal size): the mean of the runs'
  // means, and the mean of their variances plus the variance of their means
  for (int64_t i = 0; i < c; ++i) {
    double m = 0.0, v = 0.0;
    for (int64_t k = 0; k < runs.count; ++k) m += run_mean[k * c + i];
    m /= static_cast<double>(runs.count);
    for (int64_t k = 0; k < runs.count; ++k) {
      const double d = run_mean[k * c + i] - m;
      v += run_var[k * c + i] + d * d;
    }
    mean[i] = static_cast<float>(m);
    var[i] = static_cast<float>(v / static_cast<double>(runs.count));
  }
}

void Engine::BnActBwd(const memory::dims &dims, dt act, Activation kind, float eps, int64_t ghost,
                      const void *dz, const uint8_t *ws, const void *y, const float *gamma,
                      const float *mean, const float *var, void *dy, float *dgamma, float *dbeta) {
  const Runs runs = RunsOf(dims, ghost);
  BnPlan &p = BnFor(runs.dims, eps, act, kind);
  const bool relu = kind == Activation::kRelu;
  const int64_t c = dims[1];
  const size_t step = p.data.get_size(), ws_step = p.ws.get_size();
  const float *run_mean =
      runs.count > 1 ? reinterpret_cast<const float *>(ws + StatsOffset(ws_step, runs.count)) : mean;
  const float *run_var = runs.count > 1 ? run_mean + runs.count * c : var;
  std::vector<float> run_dgamma(runs.count > 1 ? c : 0), run_dbeta(runs.count > 1 ? c : 0);
  memory scratch = Scratch(p.scratch_bytes);
  // GELU: the gradient at the BatchNorm output, one run at a time
  memory dbn = relu ? memory() : memory(p.data, eng_, arena_.Get(kDiffDst, step));
  for (int64_t k = 0; k < runs.count; ++k) {
    // the first run writes the parameter gradients, the others add theirs
    float *dg = k == 0 ? dgamma : run_dgamma.data(), *db = k == 0 ? dbeta : run_dbeta.data();
    memory run_dz(p.data, eng_, Mutable(At(dz, k * step)));
    memory run_ws(p.ws, eng_, Mutable(ws + k * ws_step));
    if (!relu)
      p.act_bwd.execute(stream_, {{DNNL_ARG_SRC, run_ws}, {DNNL_ARG_DIFF_DST, run_dz},
                                  {DNNL_ARG_DIFF_SRC, dbn}, {DNNL_ARG_SCRATCHPAD, scratch}});
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(p.data, eng_, Mutable(At(y, k * step)))},
        {DNNL_ARG_MEAN, memory(p.chan, eng_, Mutable(run_mean + k * c))},
        {DNNL_ARG_VARIANCE, memory(p.chan, eng_, Mutable(run_var + k * c))},
        {DNNL_ARG_DIFF_DST, relu ? run_dz : dbn},
        {DNNL_ARG_SCALE, memory(p.chan, eng_, Mutable(gamma))},
        {DNNL_ARG_DIFF_SRC, memory(p.data, eng_, static_cast<char *>(dy) + k * step)},
        {DNNL_ARG_DIFF_SCALE, memory(p.chan, eng_, dg)},
        {DNNL_ARG_DIFF_SHIFT, memory(p.chan, eng_, db)},
        {DNNL_ARG_SCRATCHPAD, scratch}};
    if (relu) args.insert({DNNL_ARG_WORKSPACE, run_ws});
    p.bwd.execute(stream_, args);
    stream_.wait();
    if (k == 0) continue;
    for (int64_t i = 0; i < c; ++i) {
      dgamma[i] += dg[i];
      dbeta[i] += db[i];
    }
  }
}

size_t Engine::BnWorkspaceBytes(const memory::dims &dims, dt act, int64_t ghost, Activation kind) {
  const Runs runs = RunsOf(dims, ghost);
  const size_t ws_step = BnFor(runs.dims, 1e-5f, act, kind).ws.get_size();
  if (runs.count == 1) return ws_step;
  return StatsOffset(ws_step, runs.count) + 2 * sizeof(float) * static_cast<size_t>(runs.count * dims[1]);
}

BnPlan &Engine::BnFor(const memory::dims &dims, float eps, dt act, Activation kind) {
  auto key = std::make_tuple(dims, eps, act, kind);
  auto it = bns_.find(key);
  if (it != bns_.end()) return *it->second;
  dnnl_threadpool_interop_set_max_concurrency(nthreads_);
  auto plan = std::make_unique<BnPlan>();
  plan->kind = kind;
  plan->data = BlockedDesc(dims, act);
  plan->chan = memory::desc({dims[1]}, dt::f32, tag::a);
  const bool relu = kind == Activation::kRelu;
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  if (relu) flags = flags | dnnl::normalization_flags::fuse_norm_relu;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::batch_normalization_forward::primitive_desc fpd(
      eng_, dnnl::prop_kind::forward_training, plan->data, plan->data, eps, flags, attr);
  dnnl::batch_normalization_backward::primitive_desc bpd(
      eng_, dnnl::prop_kind::backward, plan->data, plan->data, plan->data, eps, flags, fpd, attr);
  plan->fwd = dnnl::batch_normalization_forward(fpd);
  plan->bwd = dnnl::batch_normalization_backward(bpd);
  plan->scratch_bytes = std::max(fpd.scratchpad_desc().get_size(), bpd.scratchpad_desc().get_size());
  Describe(relu ? "batch norm + relu forward" : "batch norm forward", dims, act, fpd.impl_info_str());
  Describe(relu ? "batch norm + relu backward" : "batch norm backward", dims, act, bpd.impl_info_str());
  if (relu) {
    plan->ws = fpd.workspace_desc();
    return *bns_.emplace(key, std::move(plan)).first->second;
  }
  plan->ws = plan->data;
  dnnl::eltwise_forward::primitive_desc efpd(eng_, dnnl::prop_kind::forward_training,
                                             dnnl::algorithm::eltwise_gelu_erf, plan->data, plan->data,
                                             0.f, 0.f, attr);
  dnnl::eltwise_backward::primitive_desc ebpd(eng_, dnnl::algorithm::eltwise_gelu_erf, plan->data, plan->data,
                                              plan->data, 0.f, 0.f, efpd, attr);
  plan->act_fwd = dnnl::eltwise_forward(efpd);
  plan->act_bwd = dnnl::eltwise_backward(ebpd);
  plan->scratch_bytes = std::max({plan->scratch_bytes, efpd.scratchpad_desc().get_size(),
                                  ebpd.scratchpad_desc().get_size()});
  Describe("gelu forward", dims, act, efpd.impl_info_str());
  Describe("gelu backward", dims, act, ebpd.impl_info_str());
  return *bns_.emplace(key, std::move(plan)).first->second;
}

// ---------------------------------------------------------------------------------------
// 2x2 stride-2 max pooling: training (with the workspace its gradient reads), inference.

void Engine::MaxPool2Fwd(const memory::dims &src_dims, dt act, const void *x, void *y, uint8_t *ws) {
  TrainPoolPlan &p = TrainPoolFor(src_dims, act);
  memory scratch = Scratch(p.scratch_bytes);
  p.fwd.execute(stream_, {{DNNL_ARG_SRC, memory(p.src, eng_, Mutable(x))},
                          {DNNL_ARG_DST, memory(p.dst, eng_, y)},
                          {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, ws)},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
  stream_.wait();
}

void Engine::MaxPool2Bwd(const memory::dims &src_dims, dt act, const void *dy, const uint8_t *ws, void *dx) {
  TrainPoolPlan &p = TrainPoolFor(src_dims, act);
  memory scratch = Scratch(p.scratch_bytes);
  p.bwd.execute(stream_, {{DNNL_ARG_DIFF_DST, memory(p.dst, eng_, Mutable(dy))},
                          {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, Mutable(ws))},
                          {DNNL_ARG_DIFF_SRC, memory(p.src, eng_, dx)},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
  stream_.wait();
}

TrainPoolPlan &Engine::TrainPoolFor(const memory::dims &src_dims, dt act) {
  auto key = std::make_pair(src_dims, act);
  auto it = train_pools_.find(key);
  if (it != train_pools_.end()) return *it->second;
  dnnl_threadpool_interop_set_max_concurrency(nthreads_);
  memory::dims dst_dims = {src_dims[0], src_dims[1], src_dims[2] / 2, src_dims[3] / 2};
  auto plan = std::make_unique<TrainPoolPlan>();
  plan->src = BlockedDesc(src_dims, act);
  plan->dst = BlockedDesc(dst_dims, act);
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
  Describe("max pool forward", src_dims, act, fpd.impl_info_str());
  Describe("max pool backward", src_dims, act, bpd.impl_info_str());
  plan->scratch_bytes = std::max(fpd.scratchpad_desc().get_size(), bpd.scratchpad_desc().get_size());
  return *train_pools_.emplace(key, std::move(plan)).first->second;
}

void Engine::MaxPool2(const memory::dims &src_dims, dt act, const void *x, void *y) {
  PoolPlan &p = PoolFor(src_dims, act);
  memory src(p.src, eng_, Mutable(x));
  memory dst(p.dst, eng_, y);
  memory scratch = Scratch(p.scratch_bytes);
  p.prim.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
  stream_.wait();
}

PoolPlan &Engine::PoolFor(const memory::dims &src_dims, dt act) {
  auto key = std::make_pair(src_dims, act);
  auto it = pools_.find(key);
  if (it != pools_.end()) return *it->second;
  dnnl_threadpool_interop_set_max_concurrency(nthreads_);
  memory::dims dst_dims = {src_dims[0], src_dims[1], src_dims[2] / 2, src_dims[3] / 2};
  auto plan = std::make_unique<PoolPlan>();
  plan->src = BlockedDesc(src_dims, act);
  plan->dst = BlockedDesc(dst_dims, act);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::pooling_forward::primitive_desc pd(
      eng_, dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_max, plan->src,
      plan->dst, {2, 2}, {2, 2}, {0, 0}, {0, 0}, {0, 0}, attr);
  plan->prim = dnnl::pooling_forward(pd);
  plan->scratch_bytes = pd.scratchpad_desc().get_size();
  Describe("max pool inference", src_dims, act, pd.impl_info_str());
  return *pools_.emplace(key, std::move(plan)).first->second;
}

// ---------------------------------------------------------------------------------------
// Layout changes at the chain's ends (same shape, other byte order; bfloat16 activations are
// converted from and to float32 on the way).

void Engine::Block(const memory::dims &dims, dt act, const float *x, void *y) {
  UnblockPlan &p = UnblockFor(dims, act);
  memory src(p.plain, eng_, const_cast<float *>(x)), dst(p.blocked, eng_, y);
  p.to_blocked.execute(stream_, src, dst);
  stream_.wait();
}

void Engine::Unblock(const memory::dims &dims, dt act, const void *x, float *y) {
  UnblockPlan &p = UnblockFor(dims, act);
  memory src(p.blocked, eng_, Mutable(x));
  memory dst(p.plain, eng_, y);
  p.prim.execute(stream_, src, dst);
  stream_.wait();
}

UnblockPlan &Engine::UnblockFor(const memory::dims &dims, dt act) {
  auto key = std::make_pair(dims, act);
  auto it = unblock_.find(key);
  if (it != unblock_.end()) return *it->second;
  dnnl_threadpool_interop_set_max_concurrency(nthreads_);
  auto plan = std::make_unique<UnblockPlan>();
  plan->blocked = BlockedDesc(dims, act);
  plan->plain = memory::desc(dims, dt::f32, tag::nchw);
  plan->prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng_, plan->blocked, eng_, plan->plain));
  plan->to_blocked = dnnl::reorder(dnnl::reorder::primitive_desc(eng_, plan->plain, eng_, plan->blocked));
  return *unblock_.emplace(key, std::move(plan)).first->second;
}

}  // namespace vgg_native
