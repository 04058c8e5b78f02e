// Dense layers (y = x w^T + b) on oneDNN's inner product, for the classifier of a network
// whose feature extractor runs in bfloat16: x, w, b, y and every gradient are float32
// tensors; inside, x, w and the incoming gradient are cast to the compute type by the
// reorders into the primitives' layouts, and the primitives write float32 (y, dx, dw, db).
//
// In bfloat16, a layer whose weight would take more than kChunkWeightBytes once cast runs in
// chunks of rows of w (of output features): the cast copy of w then takes one chunk of the
// engine's grow-only arena instead of the whole weight for the rest of the process (VGG16's
// 4096x4096 classifier layer: 4 MiB instead of 32 MiB; at 224x224, its 25088x4096 layer:
// 4 MiB instead of 196 MiB), at the same speed (each chunk is still a large product). Each
// chunk's y columns and db, dw rows are its own; dx is the sum of the chunks' products.
#include <algorithm>
#include <cstring>

#include "engine.h"

namespace vgg_native {

namespace {

constexpr int64_t kChunkWeightBytes = int64_t{4} << 20;

// dst[i, :cols] = src[i, offset : offset + cols] for i < rows (row strides given).
void CopyColumns(const float *src, int64_t src_stride, int64_t offset, float *dst, int64_t dst_stride,
                 int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    std::memcpy(dst + i * dst_stride, src + i * src_stride + offset, cols * sizeof(float));
}

}  // namespace

int64_t Engine::DenseChunkRows(const DenseShape &s) {
  if (s.act != dt::bf16 || s.o * s.k * 2 <= kChunkWeightBytes) return s.o;
  const int64_t rows = kChunkWeightBytes / (2 * s.k) / 16 * 16;  // whole 16-row blocks
  return std::min(s.o, std::max<int64_t>(rows, 16));
}

void Engine::DenseFwd(const DenseShape &s, const float *x, const float *w, const float *b, float *y) {
  const int64_t chunk = DenseChunkRows(s);
  const bool whole = chunk >= s.o;  // one chunk: y is written in place, no column copies
  const memory::desc *src_bound = nullptr;  // x is cast once while the chunks' layouts agree
  memory src;
  for (int64_t o0 = 0; o0 < s.o; o0 += chunk) {
    const int64_t rows = std::min(chunk, s.o - o0);
    DensePlan &p = DenseFor(DenseShape{s.n, s.k, rows, s.act});
    if (src_bound == nullptr || !(*src_bound == p.src_f.inner)) {
      src = Bind(p.src_f, x, kSrc, true);
      src_bound = &p.src_f.inner;
    }
    memory wei = Bind(p.wei_f, w + o0 * s.k, kWei, true);
    float *out = whole ? y : static_cast<float *>(arena_.Get(kChunk, s.n * rows * sizeof(float)));
    memory dst = BindOut(p.dst_f, out, kDst);
    memory scratch = Scratch(p.scratch_bytes);
    p.fwd.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei},
                            {DNNL_ARG_BIAS, memory(p.bias, eng_, const_cast<float *>(b + o0))},
                            {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.dst_f, dst, out);
    stream_.wait();
    if (!whole) CopyColumns(out, rows, 0, y + o0, s.o, s.n, rows);
  }
}

void Engine::DenseBwd(const DenseShape &s, const float *dy, const float *x, const float *w, float *dx,
                      float *dw, float *db) {
  const int64_t chunk = DenseChunkRows(s);
  const bool whole = chunk >= s.o;  // one chunk: dy is read in place, dx written in place
  const memory::desc *src_bound = nullptr;
  memory src;
  for (int64_t o0 = 0; o0 < s.o; o0 += chunk) {
    const int64_t rows = std::min(chunk, s.o - o0);
    DensePlan &p = DenseFor(DenseShape{s.n, s.k, rows, s.act});
    memory scratch = Scratch(p.scratch_bytes);
    const float *dy_rows = dy;
    if (!whole) {
      float *copy = static_cast<float *>(arena_.Get(kChunk, s.n * rows * sizeof(float)));
      CopyColumns(dy, s.o, o0, copy, rows, s.n, rows);
      dy_rows = copy;
    }
    memory ddst_d = Bind(p.ddst_d, dy_rows, kDiffDst, true);
    memory wei = Bind(p.wei_d, w + o0 * s.k, kWei, true);
    // the first chunk writes dx, the others a partial sum added to it
    float *part = o0 == 0 ? dx : static_cast<float *>(arena_.Get(kChunkSum, s.n * s.k * sizeof(float)));
    memory dsrc = BindOut(p.dsrc_d, part, kDiffSrc);
    p.bwd_data.execute(stream_, {{DNNL_ARG_DIFF_DST, ddst_d}, {DNNL_ARG_WEIGHTS, wei},
                                 {DNNL_ARG_DIFF_SRC, dsrc}, {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.dsrc_d, dsrc, part);
    // dy in the compute type is reused when both primitives want it in the same layout
    const bool shared = p.ddst_w.inner == p.ddst_d.inner;
    memory ddst_w = shared ? ddst_d : Bind(p.ddst_w, dy_rows, kDst, true);
    if (src_bound == nullptr || !(*src_bound == p.src_w.inner)) {
      src = Bind(p.src_w, x, kSrc, true);
      src_bound = &p.src_w.inner;
    }
    memory dwei = BindOut(p.dwei_w, dw + o0 * s.k, kDiffWei);
    p.bwd_weights.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst_w},
                                    {DNNL_ARG_DIFF_WEIGHTS, dwei},
                                    {DNNL_ARG_DIFF_BIAS, memory(p.bias, eng_, db + o0)},
                                    {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.dwei_w, dwei, dw + o0 * s.k);
    stream_.wait();
    if (part != dx) {
      const int64_t size = s.n * s.k, block = int64_t{1} << 16;
      ParallelFor(static_cast<int>((size + block - 1) / block), [&](int j) {
        const int64_t end = std::min(size, (j + 1) * block);
        for (int64_t i = j * block; i < end; ++i) dx[i] += part[i];
      });
    }
  }
}

DensePlan &Engine::DenseFor(const DenseShape &s) {
  auto it = dense_.find(s);
  if (it != dense_.end()) return *it->second;
  dnnl_threadpool_interop_set_max_concurrency(nthreads_);
  const memory::dims src_dims = {s.n, s.k}, wei_dims = {s.o, s.k}, dst_dims = {s.n, s.o};
  const memory::desc any_src(src_dims, s.act, tag::any), any_wei(wei_dims, s.act, tag::any),
      any_dst(dst_dims, s.act, tag::any);
  const memory::desc plain_src(src_dims, dt::f32, tag::ab), plain_wei(wei_dims, dt::f32, tag::ab),
      plain_dst(dst_dims, dt::f32, tag::ab);
  auto plan = std::make_unique<DensePlan>();
  plan->bias = memory::desc({s.o}, dt::f32, tag::a);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // outputs in float32: y, dx and dw straight from the primitives
  dnnl::inner_product_forward::primitive_desc fpd(eng_, dnnl::prop_kind::forward_training, any_src,
                                                  any_wei, plan->bias, plain_dst, attr);
  dnnl::inner_product_backward_data::primitive_desc dpd(eng_, plain_src, any_wei, any_dst, fpd, attr);
  dnnl::inner_product_backward_weights::primitive_desc wpd(
      eng_, any_src, memory::desc(wei_dims, dt::f32, tag::any), plan->bias, any_dst, fpd, attr);
  plan->fwd = dnnl::inner_product_forward(fpd);
  plan->bwd_data = dnnl::inner_product_backward_data(dpd);
  plan->bwd_weights = dnnl::inner_product_backward_weights(wpd);
  plan->src_f = OperandFor(eng_, plain_src, fpd.src_desc(), true, false);
  plan->wei_f = OperandFor(eng_, plain_wei, fpd.weights_desc(), true, false);
  plan->dst_f = OperandFor(eng_, plain_dst, fpd.dst_desc(), false, true);
  plan->ddst_d = OperandFor(eng_, plain_dst, dpd.diff_dst_desc(), true, false);
  plan->wei_d = OperandFor(eng_, plain_wei, dpd.weights_desc(), true, false);
  plan->dsrc_d = OperandFor(eng_, plain_src, dpd.diff_src_desc(), false, true);
  plan->src_w = OperandFor(eng_, plain_src, wpd.src_desc(), true, false);
  plan->ddst_w = OperandFor(eng_, plain_dst, wpd.diff_dst_desc(), true, false);
  plan->dwei_w = OperandFor(eng_, plain_wei, wpd.diff_weights_desc(), false, true);
  plan->scratch_bytes = std::max({fpd.scratchpad_desc().get_size(), dpd.scratchpad_desc().get_size(),
                                  wpd.scratchpad_desc().get_size()});
  const memory::dims dims = {s.n, s.k, s.o};
  Describe("dense forward", dims, s.act, fpd.impl_info_str());
  Describe("dense backward data", dims, s.act, dpd.impl_info_str());
  Describe("dense backward weights", dims, s.act, wpd.impl_info_str());
  return *dense_.emplace(s, std::move(plan)).first->second;
}

}  // namespace vgg_native
