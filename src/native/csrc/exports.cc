// The kernels MindSpore calls: extern "C" functions with the "aot" signature of
// mindspore.ops.Custom, each checking its arguments and calling the engine. Shapes are
// NCHW; "blocked" tensors keep their NCHW shape for MindSpore, but their bytes are in
// oneDNN's nChw16c / nChw8c layout (see FastBlockSize).
//
// Per-layer convolution (FastConv2d):
//   FastConvFwd : inputs  x (N,C,H,W), w (O,C,KH,KW)          -> y (N,O,OH,OW)
//   FastConvBwd : inputs  dy (N,O,OH,OW), x (N,C,H,W), w     -> dx (N,C,H,W), dw (O,C,KH,KW)
// Activations of the chains ("act") are float32 or bfloat16 tensors, chosen by the dtype of
// the tensors MindSpore passes (the output's for the first convolution); weights, weight
// gradients, BatchNorm vectors and plain NCHW tensors (network input, FastUnblock output)
// are float32 either way.
// Inference chain:
//   FastConvInferPlain   : x (N,C,H,W) plain, w, scale (O), shift (O) -> y blocked
//   FastConvInferBlocked : x blocked,         w, scale (O), shift (O) -> y blocked
//                          y = relu(conv(x, w) * scale + shift): BatchNorm (moving
//                          statistics) and bias folded into the weights and a bias
//   FastConvInferPlainGelu / FastConvInferBlockedGelu : the same with the exact GELU
//   FastMaxPool2Blocked  : x blocked (N,C,H,W) -> y blocked (N,C,H/2,W/2), 2x2 stride 2
//   FastUnblock          : x blocked -> y plain NCHW
// Training chain on the same blocked layout:
//   FastConvTrainFwdPlain / FastConvTrainFwdBlocked : x, w -> y blocked
//   FastConvTrainBwdPlain / FastConvTrainBwdBlocked : dy, x, w -> dx, dw
//                          (plain x is the network input: its dx is returned as zeros)
//   FastBnReluTrain      : y, gamma, beta, (eps, ghost) -> z = relu(bn(y)), batch mean, biased
//                          var, workspace (uint8, FastBnWorkspaceBytes(N, C, H, W, bf16, ghost,
//                          0) bytes); ghost > 0: ghost batch normalisation (engine.h), else 0
//   FastBnReluBwd        : dz, workspace, y, gamma, mean, var, (eps, ghost) -> dy, dgamma, dbeta
//   FastBnGeluTrain / FastBnGeluBwd : the same with the exact GELU after the BatchNorm (not
//                          fused: the workspace, FastBnWorkspaceBytes(..., 1) bytes, keeps bn(y))
//   FastBnStatsUpdate    : moving mean, moving var, batch mean, biased var (C), y (N,C,H,W),
//                          (1 - momentum, momentum) -> flag (1); the moving statistics updated
//                          in place as nn.BatchNorm2d updates them (unbiased variance)
//   FastMaxPool2Train    : x -> y, workspace (uint8, y's shape)
//   FastMaxPool2Bwd      : dy, workspace -> dx
//   FastBlock            : x plain NCHW -> y blocked (the gradient of FastUnblock)
// Dense layers (float32 tensors, computed in bfloat16 or float32 by the symbol's suffix):
//   FastDenseFwdBf16 / FastDenseFwdF32 : x (N,K), w (O,K), b (O) -> y (N,O)
//   FastDenseBwdBf16 / FastDenseBwdF32 : dy, x, w -> dx, dw, db
// Diagnostics: FastBlockSize, FastActivationLayout, FastBnWorkspaceBytes, FastReferenceKernels,
// FastBf16Isa, FastConvOneDnnVersion. The optimizer kernel is in optimizer.cc.
//
// Stride is 1, so the padding follows from the shapes: total = OH - H + KH - 1, with
// top = total / 2 and bottom = total - top (MindSpore's 'same', 'pad' and 'valid' all fit).
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernel_args.h"

using vgg_native::ActOf;
using vgg_native::Activation;
using vgg_native::AllRank4F32;
using vgg_native::ConvShape;
using vgg_native::DenseShape;
using vgg_native::Dims4;
using vgg_native::dt;
using vgg_native::Engine;
using vgg_native::Fail;
using vgg_native::Guarded;
using vgg_native::IsF32;
using vgg_native::IsU8;

namespace {

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

}  // namespace

// y = conv(x, w)
VGG_NATIVE_EXPORT int FastConvFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
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
VGG_NATIVE_EXPORT int FastConvBwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
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

// x, w, scale, shift, y: y = act(conv(x, w * scale) + shift), y blocked.
int InferKernel(const char *name, bool x_blocked, Activation kind, int nparam, void **params, int *ndims,
                int64_t **shapes, const char **dtypes) {
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 1 || ndims[3] != 1 || ndims[4] != 4) {
    Fail(name, "expects x, w (4-D), scale, shift (1-D), y (4-D)");
    return 1;
  }
  const dt act = ActOf(dtypes[4]);
  bool ok = act != dt::undef && ActOf(dtypes[0]) == (x_blocked ? act : dt::f32);
  for (int i = 1; i < 4; ++i) ok = ok && IsF32(dtypes[i]);
  if (!ok) {
    Fail(name, "expects w, scale, shift float32, y float32 or bfloat16, x plain float32 or of y's type");
    return 1;
  }
  ConvShape s;
  if (!ShapeFrom(shapes[0], shapes[1], shapes[4], &s) || shapes[2][0] != s.o || shapes[3][0] != s.o) {
    Fail(name, "inconsistent shapes (only stride 1, one group, no dilation)");
    return 1;
  }
  s.act = act;
  return Guarded(name, [&](Engine &e) {
    e.Infer(s, x_blocked, kind, params[0], static_cast<const float *>(params[1]),
            static_cast<const float *>(params[2]), static_cast<const float *>(params[3]), params[4]);
  });
}

}  // namespace

VGG_NATIVE_EXPORT int FastConvInferPlain(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  return InferKernel("FastConvInferPlain", false, Activation::kRelu, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastConvInferPlainGelu(int nparam, void **params, int *ndims, int64_t **shapes,
                                              const char **dtypes, void *stream, void *extra) {
  return InferKernel("FastConvInferPlainGelu", false, Activation::kGelu, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastConvInferBlocked(int nparam, void **params, int *ndims, int64_t **shapes,
                                            const char **dtypes, void *stream, void *extra) {
  return InferKernel("FastConvInferBlocked", true, Activation::kRelu, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastConvInferBlockedGelu(int nparam, void **params, int *ndims, int64_t **shapes,
                                                const char **dtypes, void *stream, void *extra) {
  return InferKernel("FastConvInferBlockedGelu", true, Activation::kGelu, nparam, params, ndims, shapes, dtypes);
}

// y = maxpool2x2(x), both blocked, of one type.
VGG_NATIVE_EXPORT int FastMaxPool2Blocked(int nparam, void **params, int *ndims, int64_t **shapes,
                                           const char **dtypes, void *stream, void *extra) {
  const dt act = nparam == 2 ? ActOf(dtypes[0]) : dt::undef;
  if (nparam != 2 || ndims[0] != 4 || ndims[1] != 4 || act == dt::undef || ActOf(dtypes[1]) != act) {
    Fail("FastMaxPool2Blocked", "expects x, y as 4-D tensors of one type (float32 or bfloat16)");
    return 1;
  }
  const int64_t *x = shapes[0], *y = shapes[1];
  if (y[0] != x[0] || y[1] != x[1] || x[2] != 2 * y[2] || x[3] != 2 * y[3] || y[2] < 1 || y[3] < 1) {
    Fail("FastMaxPool2Blocked", "expects even H, W and y = (N, C, H/2, W/2)");
    return 1;
  }
  return Guarded("FastMaxPool2Blocked", [&](Engine &e) { e.MaxPool2(Dims4(x), act, params[0], params[1]); });
}

// y (plain float32 NCHW) = x (blocked float32 or bfloat16), same shape.
VGG_NATIVE_EXPORT int FastUnblock(int nparam, void **params, int *ndims, int64_t **shapes,
                                   const char **dtypes, void *stream, void *extra) {
  const dt act = nparam == 2 ? ActOf(dtypes[0]) : dt::undef;
  if (nparam != 2 || ndims[0] != 4 || ndims[1] != 4 || act == dt::undef || !IsF32(dtypes[1]) ||
      !std::equal(shapes[0], shapes[0] + 4, shapes[1])) {
    Fail("FastUnblock", "expects x (float32 or bfloat16), y (float32) as 4-D tensors of one shape");
    return 1;
  }
  return Guarded("FastUnblock", [&](Engine &e) {
    e.Unblock(Dims4(shapes[0]), act, params[0], static_cast<float *>(params[1]));
  });
}

namespace {

// The activation type of a chain convolution: y's (or dy's); a blocked x (dx) has the same, a
// plain one (the network input) is float32, and w (dw) is float32. undef when they disagree.
dt ChainConvAct(bool x_blocked, const char *y, const char *x, const char *w) {
  const dt act = ActOf(y);
  return act != dt::undef && ActOf(x) == (x_blocked ? act : dt::f32) && IsF32(w) ? act : dt::undef;
}

int TrainFwdKernel(const char *name, bool x_blocked, int nparam, void **params, int *ndims,
                   int64_t **shapes, const char **dtypes) {
  ConvShape s;
  bool ok = nparam == 3 && ndims[0] == 4 && ndims[1] == 4 && ndims[2] == 4;
  const dt act = ok ? ChainConvAct(x_blocked, dtypes[2], dtypes[0], dtypes[1]) : dt::undef;
  if (!ok || act == dt::undef || !ShapeFrom(shapes[0], shapes[1], shapes[2], &s)) {
    Fail(name, "expects x, w (float32), y as consistent 4-D tensors, y and a blocked x float32 or bfloat16");
    return 1;
  }
  s.act = act;
  return Guarded(name, [&](Engine &e) {
    e.TrainConvFwd(s, x_blocked, params[0], static_cast<const float *>(params[1]), params[2]);
  });
}

int TrainBwdKernel(const char *name, bool x_blocked, int nparam, void **params, int *ndims,
                   int64_t **shapes, const char **dtypes) {
  ConvShape s;
  bool ok = nparam == 5;
  for (int i = 0; ok && i < nparam; ++i) ok = ndims[i] == 4;
  const dt act = ok ? ChainConvAct(x_blocked, dtypes[0], dtypes[1], dtypes[2]) : dt::undef;
  ok = ok && act != dt::undef && ActOf(dtypes[3]) == ActOf(dtypes[1]) && IsF32(dtypes[4]);
  if (!ok || !ShapeFrom(shapes[1], shapes[2], shapes[0], &s)) {
    Fail(name, "expects dy, x, w, dx, dw as consistent 4-D tensors (w, dw float32; dx of x's type)");
    return 1;
  }
  s.act = act;
  return Guarded(name, [&](Engine &e) {
    e.TrainConvBwd(s, x_blocked, params[0], params[1], static_cast<const float *>(params[2]), params[3],
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

VGG_NATIVE_EXPORT int FastConvTrainFwdPlain(int nparam, void **params, int *ndims, int64_t **shapes,
                                             const char **dtypes, void *stream, void *extra) {
  return TrainFwdKernel("FastConvTrainFwdPlain", false, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastConvTrainFwdBlocked(int nparam, void **params, int *ndims, int64_t **shapes,
                                               const char **dtypes, void *stream, void *extra) {
  return TrainFwdKernel("FastConvTrainFwdBlocked", true, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastConvTrainBwdPlain(int nparam, void **params, int *ndims, int64_t **shapes,
                                             const char **dtypes, void *stream, void *extra) {
  return TrainBwdKernel("FastConvTrainBwdPlain", false, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastConvTrainBwdBlocked(int nparam, void **params, int *ndims, int64_t **shapes,
                                               const char **dtypes, void *stream, void *extra) {
  return TrainBwdKernel("FastConvTrainBwdBlocked", true, nparam, params, ndims, shapes, dtypes);
}

// y, gamma, beta, (eps, ghost) -> z, mean, var, workspace (y, z float32 or bfloat16; vectors
// float32)
namespace {

int BnTrainKernel(const char *name, Activation kind, int nparam, void **params, int *ndims, int64_t **shapes,
                  const char **dtypes) {
  const dt act = nparam == 8 ? ActOf(dtypes[0]) : dt::undef;
  if (nparam != 8 || ndims[0] != 4 || ndims[4] != 4 || act == dt::undef || ActOf(dtypes[4]) != act ||
      !std::equal(shapes[0], shapes[0] + 4, shapes[4]) || !ChannelVectors(ndims, shapes, dtypes, 1, 2, shapes[0][1]) ||
      !ChannelVectors(ndims, shapes, dtypes, 3, 1, 2) || !ChannelVectors(ndims, shapes, dtypes, 5, 2, shapes[0][1]) ||
      ndims[7] != 1 || !IsU8(dtypes[7])) {
    Fail(name, "expects y (4-D), gamma, beta (C), (eps, ghost) (2), z (y's shape and type), mean, var (C) "
               "float32, workspace uint8; y float32 or bfloat16");
    return 1;
  }
  const float eps = static_cast<const float *>(params[3])[0];
  const auto ghost = static_cast<int64_t>(static_cast<const float *>(params[3])[1]);
  return Guarded(name, [&](Engine &e) {
    if (static_cast<size_t>(shapes[7][0]) != e.BnWorkspaceBytes(Dims4(shapes[0]), act, ghost, kind))
      throw std::runtime_error("workspace size differs from FastBnWorkspaceBytes");
    e.BnActFwd(Dims4(shapes[0]), act, kind, eps, ghost, params[0], static_cast<const float *>(params[1]),
               static_cast<const float *>(params[2]), params[4], static_cast<float *>(params[5]),
               static_cast<float *>(params[6]), static_cast<uint8_t *>(params[7]));
  });
}

// dz, workspace, y, gamma, mean, var, (eps, ghost) -> dy, dgamma, dbeta (act's gradient, then
// BatchNorm's)
int BnBwdKernel(const char *name, Activation kind, int nparam, void **params, int *ndims, int64_t **shapes,
                const char **dtypes) {
  bool ok = nparam == 10 && ndims[1] == 1 && IsU8(dtypes[1]);
  const dt act = ok ? ActOf(dtypes[0]) : dt::undef;
  for (int i : {0, 2, 7})
    ok = ok && ndims[i] == 4 && ActOf(dtypes[i]) == act && std::equal(shapes[0], shapes[0] + 4, shapes[i]);
  ok = ok && act != dt::undef && ChannelVectors(ndims, shapes, dtypes, 3, 3, shapes[0][1]) &&
       ChannelVectors(ndims, shapes, dtypes, 6, 1, 2) && ChannelVectors(ndims, shapes, dtypes, 8, 2, shapes[0][1]);
  if (!ok) {
    Fail(name, "expects dz (4-D), workspace (uint8), y (4-D), gamma, mean, var (C), (eps, ghost) (2), dy (4-D), dgamma, "
               "dbeta (C); dz, y, dy of one type (float32 or bfloat16), the rest float32");
    return 1;
  }
  const float eps = static_cast<const float *>(params[6])[0];
  const auto ghost = static_cast<int64_t>(static_cast<const float *>(params[6])[1]);
  return Guarded(name, [&](Engine &e) {
    if (static_cast<size_t>(shapes[1][0]) != e.BnWorkspaceBytes(Dims4(shapes[0]), act, ghost, kind))
      throw std::runtime_error("workspace size differs from FastBnWorkspaceBytes");
    e.BnActBwd(Dims4(shapes[0]), act, kind, eps, ghost, params[0], static_cast<const uint8_t *>(params[1]), params[2],
               static_cast<const float *>(params[3]), static_cast<const float *>(params[4]),
               static_cast<const float *>(params[5]), params[7], static_cast<float *>(params[8]),
               static_cast<float *>(params[9]));
  });
}

}  // namespace

// y, gamma, beta, (eps, ghost) -> z = relu(bn(y)), mean, var, workspace
VGG_NATIVE_EXPORT int FastBnReluTrain(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *stream, void *extra) {
  return BnTrainKernel("FastBnReluTrain", Activation::kRelu, nparam, params, ndims, shapes, dtypes);
}

// dz, workspace, y, gamma, mean, var, (eps, ghost) -> dy, dgamma, dbeta
VGG_NATIVE_EXPORT int FastBnReluBwd(int nparam, void **params, int *ndims, int64_t **shapes,
                                     const char **dtypes, void *stream, void *extra) {
  return BnBwdKernel("FastBnReluBwd", Activation::kRelu, nparam, params, ndims, shapes, dtypes);
}

// y, gamma, beta, (eps, ghost) -> z = gelu(bn(y)), mean, var, workspace
VGG_NATIVE_EXPORT int FastBnGeluTrain(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *stream, void *extra) {
  return BnTrainKernel("FastBnGeluTrain", Activation::kGelu, nparam, params, ndims, shapes, dtypes);
}

// dz, workspace, y, gamma, mean, var, (eps, ghost) -> dy, dgamma, dbeta
VGG_NATIVE_EXPORT int FastBnGeluBwd(int nparam, void **params, int *ndims, int64_t **shapes,
                                     const char **dtypes, void *stream, void *extra) {
  return BnBwdKernel("FastBnGeluBwd", Activation::kGelu, nparam, params, ndims, shapes, dtypes);
}

// The moving statistics of a BatchNorm after FastBnReluTrain, in place (MindSpore passes the
// parameters by their own buffers): moving = moving * (1 - momentum) + batch * momentum, the
// batch variance made unbiased by count / (count - 1), count = N * H * W (y is passed for its
// shape only). The same float32 operations, in the same order, as the MindSpore expression
// it replaces; one kernel instead of about ten operators and two Assigns per layer, which
// spared VGG16-BN's graph compilation about 25 MiB of peak memory.
VGG_NATIVE_EXPORT int FastBnStatsUpdate(int nparam, void **params, int *ndims, int64_t **shapes,
                                         const char **dtypes, void *stream, void *extra) {
  const char *name = "FastBnStatsUpdate";
  const int64_t c = nparam == 7 && ndims[4] == 4 ? shapes[4][1] : -1;
  if (c < 0 || !ChannelVectors(ndims, shapes, dtypes, 0, 4, c) ||
      !ChannelVectors(ndims, shapes, dtypes, 5, 1, 2) || !ChannelVectors(ndims, shapes, dtypes, 6, 1, 1)) {
    Fail(name, "expects moving mean, moving var, mean, var (C) float32, y (N,C,H,W), "
               "(1 - momentum, momentum) float32, flag (1) float32");
    return 1;
  }
  float *moving_mean = static_cast<float *>(params[0]), *moving_var = static_cast<float *>(params[1]);
  const float *mean = static_cast<const float *>(params[2]), *var = static_cast<const float *>(params[3]);
  const float *coef = static_cast<const float *>(params[5]);
  const int64_t count = shapes[4][0] * shapes[4][2] * shapes[4][3];
  const float unbias = static_cast<float>(static_cast<double>(count) /
                                          static_cast<double>(std::max<int64_t>(count - 1, 1)));
  const float keep = coef[0], momentum = coef[1];
  for (int64_t i = 0; i < c; ++i) {
    const float unbiased = var[i] * unbias;
    moving_mean[i] = moving_mean[i] * keep + mean[i] * momentum;
    moving_var[i] = moving_var[i] * keep + unbiased * momentum;
  }
  *static_cast<float *>(params[6]) = 1.0f;
  return 0;
}

// Number of oneDNN primitives the library built on reference kernels (0 when all is fast).
VGG_NATIVE_EXPORT int FastReferenceKernels() {
  int count = 0;
  Guarded("FastReferenceKernels", [&](Engine &e) { count = e.ReferenceKernels(); });
  return count;
}

// Bytes of FastBnReluTrain's (gelu = 0) or FastBnGeluTrain's (gelu = 1) workspace for an
// (n, c, h, w) input of float32 (bf16 = 0) or bfloat16 (bf16 = 1) activations, with ghost
// batches of `ghost` images (0: none); -1 on error (also when n is not a multiple of a ghost
// batch smaller than n).
VGG_NATIVE_EXPORT int64_t FastBnWorkspaceBytes(int64_t n, int64_t c, int64_t h, int64_t w, int64_t bf16,
                                               int64_t ghost, int64_t gelu) {
  size_t bytes = 0;
  int status = Guarded("FastBnWorkspaceBytes", [&](Engine &e) {
    bytes = e.BnWorkspaceBytes({n, c, h, w}, bf16 ? dt::bf16 : dt::f32, ghost,
                               gelu ? Activation::kGelu : Activation::kRelu);
  });
  return status == 0 ? static_cast<int64_t>(bytes) : -1;
}

// x -> y, workspace (x, y of one type: float32 or bfloat16)
VGG_NATIVE_EXPORT int FastMaxPool2Train(int nparam, void **params, int *ndims, int64_t **shapes,
                                         const char **dtypes, void *stream, void *extra) {
  const char *name = "FastMaxPool2Train";
  const dt act = nparam == 3 ? ActOf(dtypes[0]) : dt::undef;
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || act == dt::undef ||
      ActOf(dtypes[1]) != act || !IsU8(dtypes[2])) {
    Fail(name, "expects x, y (4-D, one type: float32 or bfloat16), workspace (4-D uint8)");
    return 1;
  }
  const int64_t *x = shapes[0], *y = shapes[1];
  if (y[0] != x[0] || y[1] != x[1] || x[2] != 2 * y[2] || x[3] != 2 * y[3] || y[2] < 1 || y[3] < 1 ||
      !std::equal(y, y + 4, shapes[2])) {
    Fail(name, "expects even H, W and y, workspace = (N, C, H/2, W/2)");
    return 1;
  }
  return Guarded(name, [&](Engine &e) {
    e.MaxPool2Fwd(Dims4(x), act, params[0], params[1], static_cast<uint8_t *>(params[2]));
  });
}

// dy, workspace -> dx
VGG_NATIVE_EXPORT int FastMaxPool2Bwd(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *stream, void *extra) {
  const char *name = "FastMaxPool2Bwd";
  const dt act = nparam == 3 ? ActOf(dtypes[0]) : dt::undef;
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || act == dt::undef ||
      !IsU8(dtypes[1]) || ActOf(dtypes[2]) != act) {
    Fail(name, "expects dy (4-D), workspace (4-D uint8), dx (4-D, dy's type: float32 or bfloat16)");
    return 1;
  }
  const int64_t *dy = shapes[0], *dx = shapes[2];
  if (dy[0] != dx[0] || dy[1] != dx[1] || dx[2] != 2 * dy[2] || dx[3] != 2 * dy[3] ||
      !std::equal(dy, dy + 4, shapes[1])) {
    Fail(name, "expects dx = (N, C, 2H, 2W) for dy, workspace = (N, C, H, W)");
    return 1;
  }
  return Guarded(name, [&](Engine &e) {
    e.MaxPool2Bwd(Dims4(dx), act, params[0], static_cast<const uint8_t *>(params[1]), params[2]);
  });
}

// y (blocked float32 or bfloat16) = x (plain float32 NCHW), same shape.
VGG_NATIVE_EXPORT int FastBlock(int nparam, void **params, int *ndims, int64_t **shapes,
                                 const char **dtypes, void *stream, void *extra) {
  const dt act = nparam == 2 ? ActOf(dtypes[1]) : dt::undef;
  if (nparam != 2 || ndims[0] != 4 || ndims[1] != 4 || !IsF32(dtypes[0]) || act == dt::undef ||
      !std::equal(shapes[0], shapes[0] + 4, shapes[1])) {
    Fail("FastBlock", "expects x (float32), y (float32 or bfloat16) as 4-D tensors of one shape");
    return 1;
  }
  return Guarded("FastBlock", [&](Engine &e) {
    e.Block(Dims4(shapes[0]), act, static_cast<const float *>(params[0]), params[1]);
  });
}

namespace {

// x (N,K), w (O,K), b (O), y (N,O): float32, consistent -> shape, or false.
bool DenseShapeFrom(int nparam, int *ndims, int64_t **shapes, const char **dtypes, const int *order,
                    dt act, DenseShape *s) {
  // order: positions of x, w, b, y among the parameters
  for (int i = 0; i < nparam; ++i)
    if (!IsF32(dtypes[i])) return false;
  const int x = order[0], w = order[1], b = order[2], y = order[3];
  if (ndims[x] != 2 || ndims[w] != 2 || ndims[b] != 1 || ndims[y] != 2) return false;
  *s = DenseShape{shapes[x][0], shapes[x][1], shapes[w][0], act};
  return shapes[w][1] == s->k && shapes[b][0] == s->o && shapes[y][0] == s->n && shapes[y][1] == s->o &&
         s->n > 0 && s->k > 0 && s->o > 0;
}

int DenseFwdKernel(const char *name, dt act, int nparam, void **params, int *ndims, int64_t **shapes,
                   const char **dtypes) {
  static const int order[] = {0, 1, 2, 3};  // x, w, b -> y
  DenseShape s;
  if (nparam != 4 || !DenseShapeFrom(nparam, ndims, shapes, dtypes, order, act, &s)) {
    Fail(name, "expects x (N,K), w (O,K), b (O), y (N,O) float32");
    return 1;
  }
  return Guarded(name, [&](Engine &e) {
    e.DenseFwd(s, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
               static_cast<const float *>(params[2]), static_cast<float *>(params[3]));
  });
}

int DenseBwdKernel(const char *name, dt act, int nparam, void **params, int *ndims, int64_t **shapes,
                   const char **dtypes) {
  static const int order[] = {1, 2, 5, 0};  // dy, x, w -> dx, dw, db: b's shape from db, y's from dy
  DenseShape s;
  if (nparam != 6 || !DenseShapeFrom(nparam, ndims, shapes, dtypes, order, act, &s) || ndims[3] != 2 ||
      ndims[4] != 2 || !std::equal(shapes[1], shapes[1] + 2, shapes[3]) ||
      !std::equal(shapes[2], shapes[2] + 2, shapes[4])) {
    Fail(name, "expects dy (N,O), x (N,K), w (O,K), dx (N,K), dw (O,K), db (O) float32");
    return 1;
  }
  return Guarded(name, [&](Engine &e) {
    e.DenseBwd(s, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
               static_cast<const float *>(params[2]), static_cast<float *>(params[3]),
               static_cast<float *>(params[4]), static_cast<float *>(params[5]));
  });
}

}  // namespace

VGG_NATIVE_EXPORT int FastDenseFwdBf16(int nparam, void **params, int *ndims, int64_t **shapes,
                                        const char **dtypes, void *stream, void *extra) {
  return DenseFwdKernel("FastDenseFwdBf16", dt::bf16, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastDenseBwdBf16(int nparam, void **params, int *ndims, int64_t **shapes,
                                        const char **dtypes, void *stream, void *extra) {
  return DenseBwdKernel("FastDenseBwdBf16", dt::bf16, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastDenseFwdF32(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *stream, void *extra) {
  return DenseFwdKernel("FastDenseFwdF32", dt::f32, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastDenseBwdF32(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *stream, void *extra) {
  return DenseBwdKernel("FastDenseBwdF32", dt::f32, nparam, params, ndims, shapes, dtypes);
}

// The bfloat16 instruction set oneDNN runs with ("avx512_core_bf16", "avx512_core_amx", ...),
// or "" when it has none. Fixes oneDNN's ISA for the process, as FastBlockSize does.
VGG_NATIVE_EXPORT const char *FastBf16Isa() { return vgg_native::Bf16Isa(); }

// Layout of the chain's activations in float32 (bf16 = 0) or bfloat16 (bf16 = 1): "nChw16c",
// "nChw8c", "nhwc", or "" when oneDNN runs no AVX2. Fixes oneDNN's ISA, as FastBlockSize does.
VGG_NATIVE_EXPORT const char *FastActivationLayout(int bf16) {
  using tag = dnnl::memory::format_tag;
  const tag t = vgg_native::ActivationTag(bf16 ? dnnl::memory::data_type::bf16
                                               : dnnl::memory::data_type::f32);
  if (t == tag::nChw16c) return "nChw16c";
  if (t == tag::nChw8c) return "nChw8c";
  if (t == tag::nhwc) return "nhwc";
  return "";
}

// Channel block of the layout the inference chain passes between layers; 0 if none.
VGG_NATIVE_EXPORT int FastBlockSize() { return Engine::BlockSize(); }

// Version of the oneDNN actually loaded, for diagnostics: "3.10.1".
VGG_NATIVE_EXPORT const char *FastConvOneDnnVersion() {
  static std::string v = [] {
    const dnnl_version_t *ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." + std::to_string(ver->patch);
  }();
  return v.c_str();
}
