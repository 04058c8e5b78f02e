// Convolutions (NCHW, stride 1, no dilation, one group) on the layouts oneDNN
// prefers, so that it picks its direct jit kernels (jit:avx512_core / jit:avx2 on blocked
// layouts) instead of the im2col+GEMM path MindSpore uses on plain NCHW:
// - per layer on plain NCHW tensors (FastConvFwd / FastConvBwd), where backward data and
//   backward weights share one call so that dy is reordered once;
// - in the blocked chain, training (forward, backward) and inference (BatchNorm and bias
//   folded into the weights and a bias, ReLU fused), in float32 or bfloat16 (ConvShape::act).
#include <algorithm>
#include <cstring>

#include "engine.h"

namespace vgg_native {

namespace {

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

}  // namespace

// ---------------------------------------------------------------------------------------
// Per layer, plain NCHW in and out.

void Engine::Forward(const ConvShape &s, const float *x, const float *w, float *y) {
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

void Engine::Backward(const ConvShape &s, const float *dy, const float *x, const float *w, float *dx,
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

FwdPlan &Engine::FwdFor(const ConvShape &s) {
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

BwdPlan &Engine::BwdFor(const ConvShape &s) {
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

// ---------------------------------------------------------------------------------------
// Blocked chain, training: y blocked; x blocked, or plain NCHW for the network input.

void Engine::TrainConvFwd(const ConvShape &s, bool x_blocked, const void *x, const float *w, void *y) {
  TrainConvPlan &p = TrainConvFor(s, x_blocked);
  memory src = Bind(p.src_f, x, kSrc, true);
  memory wei = Bind(p.wei_f, w, kWei, true);
  memory dst = BindOut(p.dst_f, y, kDst);
  memory scratch = Scratch(p.scratch_bytes);
  p.fwd.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
  Finish(p.dst_f, dst, y);
  stream_.wait();
}

void Engine::TrainConvBwd(const ConvShape &s, bool x_blocked, const void *dy, const void *x,
                          const float *w, void *dx, float *dw) {
  TrainConvPlan &p = TrainConvFor(s, x_blocked);
  memory scratch = Scratch(p.scratch_bytes);
  if (x_blocked) {
    memory ddst = Bind(p.ddst_d, dy, kDiffDst, true);
    memory wei = Bind(p.wei_d, w, kWei, true);
    memory dsrc = BindOut(p.dsrc_d, dx, kDiffSrc);
    p.bwd_data.execute(stream_, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wei},
                                 {DNNL_ARG_DIFF_SRC, dsrc}, {DNNL_ARG_SCRATCHPAD, scratch}});
    Finish(p.dsrc_d, dsrc, dx);
  } else {  // the network input (plain float32): nothing consumes its gradient
    std::memset(dx, 0, static_cast<size_t>(s.n * s.c * s.h * s.w) * sizeof(float));
  }
  if (p.matmul_weights) {
    MatmulWeights(p, s, dy, x, dw, scratch);
    stream_.wait();
    return;
  }
  memory ddst = Bind(p.ddst_w, dy, kDst, true);
  memory src = Bind(p.src_w, x, kSrc, true);
  memory dwei = BindOut(p.diff_wei, dw, kDiffWei);
  p.bwd_weights.execute(stream_, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_SRC, src},
                                  {DNNL_ARG_DIFF_WEIGHTS, dwei}, {DNNL_ARG_SCRATCHPAD, scratch}});
  Finish(p.diff_wei, dwei, dw);
  stream_.wait();
}

void Engine::MatmulWeights(const TrainConvPlan &p, const ConvShape &s, const void *dy, const void *x,
                           float *dw, const memory &scratch) {
  // Where the chain is NHWC already (bfloat16 on AMX), x and dy are read in place; otherwise
  // they are copied to NHWC first, into the arena.
  const memory x_nhwc = Bind(p.x_nhwc, x, kSrcNhwc, true);
  const memory dy_nhwc = Bind(p.dy_nhwc, dy, kDstNhwc, true);
  stream_.wait();  // im2col reads x_nhwc on the engine's threads
  char *col = static_cast<char *>(arena_.Get(kCol, p.col.get_size()));
  Im2Col(s, static_cast<const char *>(x_nhwc.get_data_handle()), col);
  // The matmul's (O, KH*KW*C) rows are dw in OHWI: written in the arena, reordered to OIHW.
  const memory ohwi = BindOut(p.dw, dw, kDiffWei);
  p.weights_mm.execute(stream_, {{DNNL_ARG_SRC, memory(p.dy_t, eng_, dy_nhwc.get_data_handle())},
                                 {DNNL_ARG_WEIGHTS, memory(p.col, eng_, col)},
                                 {DNNL_ARG_DST, memory(p.dw_rows, eng_, ohwi.get_data_handle())},
                                 {DNNL_ARG_SCRATCHPAD, scratch}});
  Finish(p.dw, ohwi, dw);
}

void Engine::Im2Col(const ConvShape &s, const char *x, char *col) {
  const size_t pixel = static_cast<size_t>(s.c) * (s.act == dt::bf16 ? 2 : 4);  // bytes
  const int64_t rows = s.n * s.oh * s.ow, per_image = s.oh * s.ow;
  const int chunks = static_cast<int>(std::min<int64_t>(rows, 4 * nthreads_));
  ParallelFor(chunks, [&](int t) {
    for (int64_t r = rows * t / chunks; r < rows * (t + 1) / chunks; ++r) {
      const int64_t n = r / per_image, oh = r % per_image / s.ow, ow = r % s.ow;
      char *out = col + static_cast<size_t>(r * s.kh * s.kw) * pixel;
      for (int64_t kh = 0; kh < s.kh; ++kh) {
        const int64_t ih = oh - s.pt + kh;
        for (int64_t kw = 0; kw < s.kw; ++kw, out += pixel) {
          const int64_t iw = ow - s.pl + kw;
          if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) {
            std::memset(out, 0, pixel);
          } else {
            std::memcpy(out, x + static_cast<size_t>((n * s.h + ih) * s.w + iw) * pixel, pixel);
          }
        }
      }
    }
  });
}

Engine::ChainDescs Engine::ChainDescsFor(const ConvShape &s, bool x_blocked) const {
  return {BlockedDesc(s.Dst(), s.act),
          x_blocked ? BlockedDesc(s.Src(), s.act) : memory::desc(s.Src(), dt::f32, tag::nchw),
          memory::desc(s.Src(), s.act, tag::any), memory::desc(s.Dst(), s.act, tag::any)};
}

TrainConvPlan &Engine::TrainConvFor(const ConvShape &s, bool x_blocked) {
  auto &cache = x_blocked ? train_blocked_ : train_plain_;
  auto it = cache.find(s);
  if (it != cache.end()) return *it->second;
  dnnl_threadpool_interop_set_max_concurrency(nthreads_);
  // Computed in s.act (float32 or bfloat16); the plain network input and the weights come in
  // float32 and are cast by their reorders, and the weight gradient is written in float32.
  const auto [dst, x, any_src, any_dst] = ChainDescsFor(s, x_blocked);
  const memory::desc src_pref = x_blocked ? x : any_src;
  const memory::desc any_wei(s.Wei(), s.act, tag::any), any_diff_wei(s.Wei(), dt::f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto direct = dnnl::algorithm::convolution_direct;
  auto fpd = Preferring(src_pref, dst, any_src, any_dst, [&](const memory::desc &a, const memory::desc &b) {
    return dnnl::convolution_forward::primitive_desc(eng_, dnnl::prop_kind::forward_training, direct, a,
                                                     any_wei, b, s.Strides(), s.PadL(), s.PadR(), attr);
  });
  auto plan = std::make_unique<TrainConvPlan>();
  plan->fwd = dnnl::convolution_forward(fpd);
  plan->src_f = OperandFor(eng_, x, fpd.src_desc(), true, false);
  plan->wei_f = MakeOperand(eng_, s.Wei(), tag::oihw, fpd.weights_desc(), true, false);
  plan->dst_f = OperandFor(eng_, dst, fpd.dst_desc(), false, true);
  size_t scratch = fpd.scratchpad_desc().get_size();
  plan->matmul_weights = x_blocked && s.oh * s.ow <= MatmulWeightsMaxPixels();
  if (plan->matmul_weights) {
    const int64_t rows = s.n * s.oh * s.ow, cols = s.kh * s.kw * s.c;
    plan->x_nhwc = OperandFor(eng_, x, memory::desc(s.Src(), s.act, tag::nhwc), true, false);
    plan->dy_nhwc = OperandFor(eng_, dst, memory::desc(s.Dst(), s.act, tag::nhwc), true, false);
    plan->dy_t = memory::desc({s.o, rows}, s.act, tag::ba);  // dy in NHWC, read transposed
    plan->col = memory::desc({rows, cols}, s.act, tag::ab);
    plan->dw_rows = memory::desc({s.o, cols}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc mpd(eng_, plan->dy_t, plan->col, plan->dw_rows, attr);
    plan->weights_mm = dnnl::matmul(mpd);
    // dw_rows in the weights' dims: OHWI, the same bytes.
    plan->dw = MakeOperand(eng_, s.Wei(), tag::oihw, memory::desc(s.Wei(), dt::f32, tag::ohwi), false, true);
    scratch = std::max(scratch, mpd.scratchpad_desc().get_size());
    const bool copies = plan->x_nhwc.needs_reorder || plan->dy_nhwc.needs_reorder;
    Describe(copies ? "training backward weights (im2col + matmul)"
                    : "training backward weights (im2col + matmul, NHWC in place)",
             s, mpd.impl_info_str());
  } else {
    // On NHWC float32 activations (AVX2 only) oneDNN's backward-weights kernel ran 15 % (32x32)
    // to 2.5x (224x224) slower than on 8-channel blocks, so it reads reordered blocked copies.
    const auto blocked = BlockedActivationTag();
    const bool reblock = s.act == dt::f32 && ActivationTag(dt::f32) == tag::nhwc &&
                         s.c % blocked.second == 0 && s.o % blocked.second == 0;
    const memory::desc w_src = reblock && x_blocked ? memory::desc(s.Src(), s.act, blocked.first) : src_pref;
    const memory::desc w_dst = reblock ? memory::desc(s.Dst(), s.act, blocked.first) : dst;
    auto wpd = Preferring(w_src, w_dst, any_src, any_dst, [&](const memory::desc &a, const memory::desc &b) {
      return dnnl::convolution_backward_weights::primitive_desc(eng_, direct, a, any_diff_wei, b, s.Strides(),
                                                                s.PadL(), s.PadR(), fpd, attr);
    });
    plan->bwd_weights = dnnl::convolution_backward_weights(wpd);
    plan->src_w = OperandFor(eng_, x, wpd.src_desc(), true, false);
    plan->ddst_w = OperandFor(eng_, dst, wpd.diff_dst_desc(), true, false);
    plan->diff_wei = MakeOperand(eng_, s.Wei(), tag::oihw, wpd.diff_weights_desc(), false, true);
    scratch = std::max(scratch, wpd.scratchpad_desc().get_size());
    Describe("training backward weights", s, wpd.impl_info_str());
  }
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
  Describe(x_blocked ? "training forward (blocked in)" : "training forward (plain in)", s,
           fpd.impl_info_str());
  return *cache.emplace(s, std::move(plan)).first->second;
}

// ---------------------------------------------------------------------------------------
// Blocked chain, inference: y (blocked) = act(conv(x, w * scale[o]) + shift), act the
// chain's ReLU or GELU as the convolution's post-op.

void Engine::Infer(const ConvShape &s, bool x_blocked, Activation kind, const void *x, const float *w,
                   const float *scale, const float *shift, void *y) {
  InferPlan &p = InferFor(s, x_blocked, kind);
  memory src = Bind(p.src, x, kSrc, true);
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

InferPlan &Engine::InferFor(const ConvShape &s, bool x_blocked, Activation kind) {
  auto &cache = x_blocked ? infer_blocked_ : infer_plain_;
  const auto key = std::make_pair(s, kind);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  dnnl_threadpool_interop_set_max_concurrency(nthreads_);
  // Computed in s.act; the folded weights are scaled and cast by one reorder, the bias
  // (shift) stays float32.
  const auto [dst, x, any_src, any_dst] = ChainDescsFor(s, x_blocked);
  auto plan = std::make_unique<InferPlan>();
  plan->chan = memory::desc({s.o}, dt::f32, tag::a);
  dnnl::post_ops po;
  const auto eltwise =
      kind == Activation::kGelu ? dnnl::algorithm::eltwise_gelu_erf : dnnl::algorithm::eltwise_relu;
  po.append_eltwise(eltwise, 0.f, 0.f);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_post_ops(po);
  auto pd = Preferring(x_blocked ? x : any_src, dst, any_src, any_dst,
                       [&](const memory::desc &a, const memory::desc &b) {
    return dnnl::convolution_forward::primitive_desc(
        eng_, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, a,
        memory::desc(s.Wei(), s.act, tag::any), plan->chan, b, s.Strides(), s.PadL(), s.PadR(), attr);
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
  return *cache.emplace(key, std::move(plan)).first->second;
}

}  // namespace vgg_native
