// What every exported kernel shares: the export macro, argument checks on MindSpore's
// "aot" calling convention (see help(mindspore.ops.Custom)), and Guarded, which runs the
// work under the engine's lock and turns an exception into a one-line message and status 1.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>

#include "engine.h"

#define VGG_NATIVE_EXPORT extern "C" __attribute__((visibility("default")))

namespace vgg_native {

inline bool IsF32(const char *dtype) {
  return dtype != nullptr && (std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0);
}

inline bool IsU8(const char *dtype) { return dtype != nullptr && std::strcmp(dtype, "uint8") == 0; }

inline bool IsBf16(const char *dtype) { return dtype != nullptr && std::strcmp(dtype, "bfloat16") == 0; }

// The activation type a tensor's dtype names: f32, bf16, or undef for anything else.
inline dt ActOf(const char *dtype) { return IsF32(dtype) ? dt::f32 : IsBf16(dtype) ? dt::bf16 : dt::undef; }

inline void Fail(const char *kernel, const char *why) {
  std::fprintf(stderr, "vgg_native %s: %s\n", kernel, why);
}

inline memory::dims Dims4(const int64_t *shape) { return {shape[0], shape[1], shape[2], shape[3]}; }

inline bool AllRank4F32(int nparam, int *ndims, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (ndims[i] != 4 || !IsF32(dtypes[i])) return false;
  return true;
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

}  // namespace vgg_native
