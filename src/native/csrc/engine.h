// The engine behind every exported kernel: one oneDNN CPU engine and stream on the
// project's thread pool, the primitives ("plans") it has built, cached per shape, and a
// grow-only arena for the buffers of reordered operands.
//
// Calls are serialised by one mutex (each call already uses every core through the thread
// pool given to the oneDNN stream). Primitives run on the layouts oneDNN prefers
// (format_tag::any, or the channel-blocked nChw16c / nChw8c where that is faster); plain
// NCHW/OIHW tensors are reordered in and out around them.
//
// Activation: every convolution (+ BatchNorm) of the blocked chains is followed by ReLU or
// by the exact (erf) GELU, one kind per chain; the plans of each are cached apart.
//
// Precision: the blocked chains and the dense layers run in float32 or in bfloat16. In
// bfloat16 the activations between layers (and their gradients) are bfloat16 tensors,
// while weights come in and weight gradients go out in float32 (cast inside the reorder
// into the primitive's layout, and written in float32 by the backward-weights primitives),
// and BatchNorm keeps its scale, shift, mean and variance in float32.
//
// Definitions: engine.cc (set-up, operand binding), conv.cc (convolutions), chain.cc
// (BatchNorm + ReLU, pooling and layout changes of the blocked chain), dense.cc (dense
// layers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "oneapi/dnnl/dnnl_threadpool.hpp"
#include "thread_pool.h"

namespace vgg_native {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// VGG_NATIVE_VERBOSE=1 (old name FAST_CONV_VERBOSE): print on stderr the implementation
// oneDNN picks for each primitive.
bool Verbose();

// Whether oneDNN picked its reference (unoptimised) implementation.
bool IsReference(const char *impl);

// Channel-blocked activation layout matching the SIMD width oneDNN runs with (16 floats
// for AVX-512, 8 for AVX2), or `any` where there is none.
std::pair<tag, int64_t> BlockedActivationTag();

// Layout of the chain's activations of data type `act`: for float32 BlockedActivationTag()
// with AVX-512 and NHWC with AVX2 only, whose brgemm convolutions run on NHWC; for bfloat16
// nChw16c, or NHWC on CPUs with AMX, whose bfloat16 convolutions run on NHWC
// (VGG_NATIVE_F32_LAYOUT and VGG_NATIVE_BF16_LAYOUT = blocked|nhwc override, to compare them).
// Fixed for the process on first use.
tag ActivationTag(dt act);

// The bfloat16 instruction set oneDNN runs with ("avx512_core_bf16", "avx512_core_amx",
// ...), or "" when it has none (no AVX512-BF16 / AMX-BF16 in the CPU, or capped below it by
// ONEDNN_MAX_CPU_ISA).
const char *Bf16Isa();

// Output size (height x width) at or below which a training convolution of the blocked chain
// computes its weight gradient as one matrix product over the whole batch (im2col, then
// oneDNN's matmul) instead of oneDNN's convolution kernel: kMatmulWeightsMaxPixels with
// AVX-512 (float32 and bfloat16, with or without AMX), kMatmulWeightsMaxPixelsAvx2 with AVX2
// and no AVX-512, otherwise 0 (never); VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS=N overrides it
// (0: never).
// It depends only on the shape and the machine (as capped by ONEDNN_MAX_CPU_ISA), so every
// process of a run, and a resumed one, makes the same choice.
constexpr int64_t kMatmulWeightsMaxPixels = 64;
constexpr int64_t kMatmulWeightsMaxPixelsAvx2 = 16;
int64_t MatmulWeightsMaxPixels();

const char *DtName(dt d);

// The activation after each convolution (+ BatchNorm) of the blocked chains.
enum class Activation { kRelu = 0, kGelu = 1 };  // kGelu: x * Phi(x), the exact (erf) GELU

// ---------------------------------------------------------------------------------------
// Grow-only 64-byte aligned buffers, one per role. Used only under the engine's mutex.

// kChunk, kChunkSum: a row-chunked dense layer's per-chunk output or output gradient, and
// partial input gradient (dense.cc).
enum Slot { kSrc = 0, kWei, kDst, kDiffDst, kDiffSrc, kDiffWei, kScratch, kCol, kSrcNhwc, kDstNhwc,
            kChunk, kChunkSum, kNumSlots };

class Arena {
 public:
  void *Get(int slot, size_t bytes);

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
  dt act = dt::f32;  // activations of the chain kernels (the per-layer kernels: float32)
  bool operator<(const ConvShape &r) const {
    return std::tie(n, c, h, w, o, kh, kw, oh, ow, pt, pb, pl, pr, act) <
           std::tie(r.n, r.c, r.h, r.w, r.o, r.kh, r.kw, r.oh, r.ow, r.pt, r.pb, r.pl, r.pr, r.act);
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
                   bool in, bool out);
Operand MakeOperand(const dnnl::engine &eng, const memory::dims &dims, tag plain_tag,
                    const memory::desc &inner, bool in, bool out);

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
  // Or the weight gradient as dw (O, KH*KW*C) = dy^T (O, N*OH*OW) x col (N*OH*OW, KH*KW*C),
  // col = im2col(x in NHWC): where matmul_weights (see MatmulWeightsMaxPixels).
  bool matmul_weights = false;
  Operand x_nhwc, dy_nhwc;  // the chain's x and dy as NHWC (no reorder where they are already)
  Operand dw;               // the matmul's rows are dw in OHWI, reordered out to OIHW
  memory::desc dy_t, col, dw_rows;
  dnnl::matmul weights_mm;
  size_t scratch_bytes = 0;
};

// BatchNorm and its activation (training). ReLU: fused into the BatchNorm primitives, `ws`
// their ReLU workspace. GELU: BatchNorm, then an eltwise GELU; `ws` (= `data`) holds the
// BatchNorm output, the GELU's input, which its gradient reads.
struct BnPlan {
  Activation kind = Activation::kRelu;
  dnnl::batch_normalization_forward fwd;
  dnnl::batch_normalization_backward bwd;
  dnnl::eltwise_forward act_fwd;   // GELU only
  dnnl::eltwise_backward act_bwd;  // GELU only
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
  memory::desc blocked, plain;  // blocked: the chain's data type; plain: float32 NCHW
};

// A dense layer y (N,O) = x (N,K) w^T (O,K) + b, float32 tensors, computed in `act`.
struct DenseShape {
  int64_t n, k, o;
  dt act;
  bool operator<(const DenseShape &r) const {
    return std::tie(n, k, o, act) < std::tie(r.n, r.k, r.o, r.act);
  }
};

struct DensePlan {
  dnnl::inner_product_forward fwd;
  dnnl::inner_product_backward_data bwd_data;
  dnnl::inner_product_backward_weights bwd_weights;
  Operand src_f, wei_f, dst_f;      // forward
  Operand ddst_d, wei_d, dsrc_d;    // backward data
  Operand src_w, ddst_w, dwei_w;    // backward weights
  memory::desc bias;
  size_t scratch_bytes = 0;
};

// ---------------------------------------------------------------------------------------

class Engine {
 public:
  static Engine &Get();

  std::mutex &Mutex() { return mu_; }

  // Primitives built on a reference (unoptimised) kernel so far: a test keeps this at 0.
  int ReferenceKernels() const { return reference_kernels_; }

  // Runs fn(i) for i in [0, n) on the engine's threads.
  void ParallelFor(int n, const std::function<void(int)> &fn);

  // Channel block of the blocked layout (16 with AVX-512, 8 with AVX2), 0 if none.
  static int BlockSize();

  // ---- per-layer convolution on plain NCHW (conv.cc)
  void Forward(const ConvShape &s, const float *x, const float *w, float *y);
  void Backward(const ConvShape &s, const float *dy, const float *x, const float *w, float *dx,
                float *dw);

  // ---- convolutions of the blocked chain (conv.cc), activations of type s.act; y blocked,
  // x blocked or plain float32 NCHW (the network input); w, dw float32 OIHW
  void TrainConvFwd(const ConvShape &s, bool x_blocked, const void *x, const float *w, void *y);
  void TrainConvBwd(const ConvShape &s, bool x_blocked, const void *dy, const void *x,
                    const float *w, void *dx, float *dw);
  // y = act(conv(x, w * scale[o]) + shift), act ReLU or GELU
  void Infer(const ConvShape &s, bool x_blocked, Activation kind, const void *x, const float *w,
             const float *scale, const float *shift, void *y);

  // ---- BatchNorm + activation (ReLU or GELU), pooling and layout changes of the blocked
  // chain (chain.cc); the activations are of type `act`, the per-channel vectors float32
  // ghost > 0 and < N: ghost batch normalisation, each run of `ghost` consecutive images
  // normalised with its own statistics (N a multiple of ghost); mean and var are still the
  // whole batch's, the per-run statistics are kept in the workspace for the backward pass.
  void BnActFwd(const memory::dims &dims, dt act, Activation kind, float eps, int64_t ghost,
                const void *y, const float *gamma, const float *beta, void *z, float *mean,
                float *var, uint8_t *ws);
  void BnActBwd(const memory::dims &dims, dt act, Activation kind, float eps, int64_t ghost,
                const void *dz, const uint8_t *ws, const void *y, const float *gamma,
                const float *mean, const float *var, void *dy, float *dgamma, float *dbeta);
  // Bytes of the workspace FastBnReluTrain / FastBnGeluTrain return for an (N, C, H, W)
  // input: the activation's workspace (ReLU: oneDNN's, about a bit per element; GELU: the
  // BatchNorm output), with ghost batches one per run followed by the runs' means and
  // variances.
  size_t BnWorkspaceBytes(const memory::dims &dims, dt act, int64_t ghost = 0,
                          Activation kind = Activation::kRelu);
  void MaxPool2Fwd(const memory::dims &src_dims, dt act, const void *x, void *y, uint8_t *ws);
  void MaxPool2Bwd(const memory::dims &src_dims, dt act, const void *dy, const uint8_t *ws, void *dx);
  // 2x2 stride-2 max pooling on blocked activations (inference).
  void MaxPool2(const memory::dims &src_dims, dt act, const void *x, void *y);
  // plain float32 NCHW <-> blocked activations of type act
  void Block(const memory::dims &dims, dt act, const float *x, void *y);
  void Unblock(const memory::dims &dims, dt act, const void *x, float *y);

  // ---- dense layers (dense.cc): float32 tensors, computed in s.act
  void DenseFwd(const DenseShape &s, const float *x, const float *w, const float *b, float *y);
  void DenseBwd(const DenseShape &s, const float *dy, const float *x, const float *w, float *dx,
                float *dw, float *db);

 private:
  Engine();

  // Memory holding the operand in the primitive's layout; reorders the plain input in.
  memory Bind(const Operand &op, const void *plain_ptr, int slot, bool reorder_in);
  memory BindOut(const Operand &op, void *plain_ptr, int slot) {
    return Bind(op, plain_ptr, slot, false);
  }
  // Reorders a result computed in the primitive's layout out to the plain tensor.
  void Finish(const Operand &op, memory inner, void *plain_ptr);
  memory Scratch(size_t bytes);
  // The chain's activation layout for `dims` of type `act` (see ActivationTag).
  memory::desc BlockedDesc(const memory::dims &dims, dt act = dt::f32) const;
  // A chain convolution's operands in s.act: its blocked output, its input (the previous
  // layer's blocked output, or the network's plain float32 input) and the `any` descriptors.
  struct ChainDescs {
    memory::desc dst, x, any_src, any_dst;
  };
  ChainDescs ChainDescsFor(const ConvShape &s, bool x_blocked) const;
  // Counts reference kernels; with Verbose(), prints the implementation oneDNN picked.
  void Describe(const char *what, const ConvShape &s, const char *impl);
  void Describe(const char *what, const memory::dims &dims, dt act, const char *impl);

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

  // The weight gradient of a plan with matmul_weights (see TrainConvPlan).
  void MatmulWeights(const TrainConvPlan &p, const ConvShape &s, const void *dy, const void *x,
                     float *dw, const memory &scratch);
  // x (N, H, W, C) -> col (N*OH*OW, KH*KW*C), zeros where the kernel overlaps the padding.
  void Im2Col(const ConvShape &s, const char *x, char *col);

  // Plans, built on first use of a shape.
  FwdPlan &FwdFor(const ConvShape &s);
  BwdPlan &BwdFor(const ConvShape &s);
  TrainConvPlan &TrainConvFor(const ConvShape &s, bool x_blocked);
  InferPlan &InferFor(const ConvShape &s, bool x_blocked, Activation kind);
  BnPlan &BnFor(const memory::dims &dims, float eps, dt act, Activation kind);
  TrainPoolPlan &TrainPoolFor(const memory::dims &src_dims, dt act);
  PoolPlan &PoolFor(const memory::dims &src_dims, dt act);
  UnblockPlan &UnblockFor(const memory::dims &dims, dt act);
  DensePlan &DenseFor(const DenseShape &s);
  // Rows of w per chunk of a dense layer in bfloat16 (s.o when it is not chunked).
  static int64_t DenseChunkRows(const DenseShape &s);

  std::mutex mu_;
  dnnl::engine eng_;
  int nthreads_;
  ThreadPool pool_;
  dnnl::stream stream_;
  Arena arena_;
  std::map<ConvShape, std::unique_ptr<FwdPlan>> fwd_;
  std::map<ConvShape, std::unique_ptr<BwdPlan>> bwd_;
  std::map<std::pair<ConvShape, Activation>, std::unique_ptr<InferPlan>> infer_plain_, infer_blocked_;
  using DimsDt = std::pair<memory::dims, dt>;
  std::map<DimsDt, std::unique_ptr<PoolPlan>> pools_;
  std::map<DimsDt, std::unique_ptr<UnblockPlan>> unblock_;
  std::map<ConvShape, std::unique_ptr<TrainConvPlan>> train_plain_, train_blocked_;
  int reference_kernels_ = 0;
  std::map<std::tuple<memory::dims, float, dt, Activation>, std::unique_ptr<BnPlan>> bns_;
  std::map<DimsDt, std::unique_ptr<TrainPoolPlan>> train_pools_;
  std::map<DenseShape, std::unique_ptr<DensePlan>> dense_;
};

}  // namespace vgg_native
