// The rest of the blocked chain on oneDNN's channel-blocked layout: BatchNorm fused with
// ReLU (training, with batch statistics), 2x2 max pooling (training and inference), and the
// reorders between plain NCHW and the blocked layout at the chain's ends.
#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "engine.h"

namespace vgg_native {

// ---------------------------------------------------------------------------------------
// BatchNorm + ReLU (training): z = relu(bn(y)), the batch mean and biased variance, and
// the ReLU workspace its gradient reads.

void Engine::BnReluFwd(const memory::dims &dims, float eps, const float *y, const float *gamma,
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

void Engine::BnReluBwd(const memory::dims &dims, float eps, const float *dz, const uint8_t *ws,
                       const float *y, const float *gamma, const float *mean, const float *var,
                       float *dy, float *dgamma, float *dbeta) {
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

size_t Engine::BnWorkspaceBytes(const memory::dims &dims) { return BnFor(dims, 1e-5f).ws.get_size(); }

BnPlan &Engine::BnFor(const memory::dims &dims, float eps) {
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
    std::fprintf(stderr, "vgg_native: batch norm + relu %ldx%ldx%ldx%ld -> %s / %s, workspace %zu bytes\n",
                 (long)dims[0], (long)dims[1], (long)dims[2], (long)dims[3], fpd.impl_info_str(),
                 bpd.impl_info_str(), plan->ws.get_size());
  return *bns_.emplace(key, std::move(plan)).first->second;
}

// ---------------------------------------------------------------------------------------
// 2x2 stride-2 max pooling: training (with the workspace its gradient reads), inference.

void Engine::MaxPool2Fwd(const memory::dims &src_dims, const float *x, float *y, uint8_t *ws) {
  TrainPoolPlan &p = TrainPoolFor(src_dims);
  memory scratch = Scratch(p.scratch_bytes);
  p.fwd.execute(stream_, {{DNNL_ARG_SRC, memory(p.src, eng_, const_cast<float *>(x))},
                          {DNNL_ARG_DST, memory(p.dst, eng_, y)},
                          {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, ws)},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
  stream_.wait();
}

void Engine::MaxPool2Bwd(const memory::dims &src_dims, const float *dy, const uint8_t *ws, float *dx) {
  TrainPoolPlan &p = TrainPoolFor(src_dims);
  memory scratch = Scratch(p.scratch_bytes);
  p.bwd.execute(stream_, {{DNNL_ARG_DIFF_DST, memory(p.dst, eng_, const_cast<float *>(dy))},
                          {DNNL_ARG_WORKSPACE, memory(p.ws, eng_, const_cast<uint8_t *>(ws))},
                          {DNNL_ARG_DIFF_SRC, memory(p.src, eng_, dx)},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
  stream_.wait();
}

TrainPoolPlan &Engine::TrainPoolFor(const memory::dims &src_dims) {
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

void Engine::MaxPool2(const memory::dims &src_dims, const float *x, float *y) {
  PoolPlan &p = PoolFor(src_dims);
  memory src(p.src, eng_, const_cast<float *>(x));
  memory dst(p.dst, eng_, y);
  memory scratch = Scratch(p.scratch_bytes);
  p.prim.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
  stream_.wait();
}

PoolPlan &Engine::PoolFor(const memory::dims &src_dims) {
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

// ---------------------------------------------------------------------------------------
// Layout changes at the chain's ends (same shape, other byte order).

void Engine::Block(const memory::dims &dims, const float *x, float *y) {
  UnblockPlan &p = UnblockFor(dims);
  memory src(p.plain, eng_, const_cast<float *>(x)), dst(p.blocked, eng_, y);
  p.to_blocked.execute(stream_, src, dst);
  stream_.wait();
}

void Engine::Unblock(const memory::dims &dims, const float *x, float *y) {
  UnblockPlan &p = UnblockFor(dims);
  memory src(p.blocked, eng_, const_cast<float *>(x));
  memory dst(p.plain, eng_, y);
  p.prim.execute(stream_, src, dst);
  stream_.wait();
}

UnblockPlan &Engine::UnblockFor(const memory::dims &dims) {
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

}  // namespace vgg_native
