// The rest of the blocked chain on oneDNN's channel-blocked layout: BatchNorm fused with
// ReLU (training, with batch statistics), 2x2 max pooling (training and inference), and the
// reorders between plain float32 NCHW and the blocked layout at the chain's ends. Activations
// are float32 or bfloat16 (`act`); BatchNorm's scale, shift, mean and variance are float32
// whatever the activations (oneDNN computes the statistics in float32).
#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "engine.h"

namespace vgg_native {

// ---------------------------------------------------------------------------------------
// BatchNorm + ReLU (training): z = relu(bn(y)), the batch mean and biased variance, and
// the ReLU workspace its gradient reads.

namespace {

void *Mutable(const void *p) { return const_cast<void *>(p); }

}  // namespace

void Engine::BnReluFwd(const memory::dims &dims, dt act, float eps, const void *y, const float *gamma,
                       const float *beta, void *z, float *mean, float *var, uint8_t *ws) {
  BnPlan &p = BnFor(dims, eps, act);
  memory scratch = Scratch(p.scratch_bytes);
  p.fwd.execute(stream_, {{DNNL_ARG_SRC, memory(p.data, eng_, Mutable(y))},
                          {DNNL_ARG_DST, memory(p.data, eng_, z)},
                          {DNNL_ARG_SCALE, memory(p.chan, eng_, Mutable(gamma))},
                          {DNNL_ARG_SHIFT, memory(p.chan, eng_, Mutable(beta))},
                          {DNNL_ARG_MEAN, memory(p.chan, eng_, mean)},
                          {DNNL_ARG_VARIANCE, memory(p.chan, eng_, var)},
                          {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, ws)},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
  stream_.wait();
}

void Engine::BnReluBwd(const memory::dims &dims, dt act, float eps, const void *dz, const uint8_t *ws,
                       const void *y, const float *gamma, const float *mean, const float *var,
                       void *dy, float *dgamma, float *dbeta) {
  BnPlan &p = BnFor(dims, eps, act);
  memory scratch = Scratch(p.scratch_bytes);
  p.bwd.execute(stream_, {{DNNL_ARG_SRC, memory(p.data, eng_, Mutable(y))},
                          {DNNL_ARG_MEAN, memory(p.chan, eng_, Mutable(mean))},
                          {DNNL_ARG_VARIANCE, memory(p.chan, eng_, Mutable(var))},
                          {DNNL_ARG_DIFF_DST, memory(p.data, eng_, Mutable(dz))},
                          {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, Mutable(ws))},
                          {DNNL_ARG_SCALE, memory(p.chan, eng_, Mutable(gamma))},
                          {DNNL_ARG_DIFF_SRC, memory(p.data, eng_, dy)},
                          {DNNL_ARG_DIFF_SCALE, memory(p.chan, eng_, dgamma)},
                          {DNNL_ARG_DIFF_SHIFT, memory(p.chan, eng_, dbeta)},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
  stream_.wait();
}

size_t Engine::BnWorkspaceBytes(const memory::dims &dims, dt act) {
  return BnFor(dims, 1e-5f, act).ws.get_size();
}

BnPlan &Engine::BnFor(const memory::dims &dims, float eps, dt act) {
  auto key = std::make_tuple(dims, eps, act);
  auto it = bns_.find(key);
  if (it != bns_.end()) return *it->second;
  dnnl_threadpool_interop_set_max_concurrency(nthreads_);
  auto plan = std::make_unique<BnPlan>();
  plan->data = BlockedDesc(dims, act);
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
  Describe("batch norm + relu forward", dims, act, fpd.impl_info_str());
  Describe("batch norm + relu backward", dims, act, bpd.impl_info_str());
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
