// The optimizer kernels: momentum SGD with weight decay for every parameter in one call,
// in place and in one pass over memory, on the engine's threads (FusedMomentum in
// src/native/optimizer.py).
//   FastMomentumUpdate   : w_0..w_n-1, accum_0.., g_0.., lr_0.., wd (n), momentum (1) -> done (1)
//                          per parameter: accum = momentum * accum + (g + wd * w); w -= lr * accum
//   FastNesterovUpdate   : the same arguments; with d = g + wd * w:
//                          accum = momentum * accum + d; w -= lr * (d + momentum * accum)
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernel_args.h"

using vgg_native::Engine;
using vgg_native::Fail;
using vgg_native::Guarded;
using vgg_native::IsF32;

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

// The same with the Nesterov update (PyTorch's SGD(nesterov=True) without dampening).
__attribute__((target_clones("avx512f", "avx2", "default")))
void NesterovRange(float *w, float *accum, const float *g, float lr, float wd, float momentum,
                   int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float d = g[i] + wd * w[i];
    const float a = momentum * accum[i] + d;
    accum[i] = a;
    w[i] -= lr * (d + momentum * a);
  }
}

using RangeFn = void (*)(float *, float *, const float *, float, float, float, int64_t, int64_t);

float ScalarOf(const void *p) { return *static_cast<const float *>(p); }

bool IsScalarF32(int ndims, const int64_t *shape, const char *dtype) {
  if (!IsF32(dtype)) return false;
  int64_t n = 1;
  for (int d = 0; d < ndims; ++d) n *= shape[d];
  return n == 1;
}

// Updates the parameters and momentum accumulators in place (MindSpore passes parameters
// by their own buffers) with `range` over chunks of each; the output is a one-element flag
// (1.0) to order the step on.
int Update(const char *name, RangeFn range, int nparam, void **params, int *ndims,
           int64_t **shapes, const char **dtypes) {
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
      range(job.w, job.accum, job.g, job.lr, job.wd, momentum, job.begin, job.end);
    });
  });
}

}  // namespace

VGG_NATIVE_EXPORT int FastMomentumUpdate(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  return Update("FastMomentumUpdate", MomentumRange, nparam, params, ndims, shapes, dtypes);
}

VGG_NATIVE_EXPORT int FastNesterovUpdate(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  return Update("FastNesterovUpdate", NesterovRange, nparam, params, ndims, shapes, dtypes);
}

