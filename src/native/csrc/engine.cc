// The engine's set-up and the plumbing every kernel shares: the arena, operand binding
// (reorders between MindSpore's plain tensors and the primitives' layouts), scratchpads.
#include "engine.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

namespace vgg_native {

bool Verbose() {
  static const bool v = [] {
    for (const char *name : {"VGG_NATIVE_VERBOSE", "FAST_CONV_VERBOSE"}) {
      const char *env = std::getenv(name);
      if (env != nullptr && env[0] != '\0') return env[0] != '0';
    }
    return false;
  }();
  return v;
}

bool IsReference(const char *impl) { return std::strncmp(impl, "ref", 3) == 0; }

namespace {

// Whether oneDNN runs with every feature of `isa` (its ISA values nest as bit sets).
bool Runs(dnnl_cpu_isa_t isa) {
  const unsigned effective = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  return (effective & static_cast<unsigned>(isa)) == static_cast<unsigned>(isa);
}

}  // namespace

std::pair<tag, int64_t> BlockedActivationTag() {
  if (Runs(dnnl_cpu_isa_avx512_core)) return {tag::nChw16c, 16};
  if (Runs(dnnl_cpu_isa_avx2)) return {tag::nChw8c, 8};
  return {tag::any, 1};
}

namespace {

// VGG_NATIVE_<precision>_LAYOUT=blocked|nhwc, or `otherwise` when unset or anything else.
tag LayoutFromEnv(const char *name, tag blocked, tag otherwise) {
  const char *env = std::getenv(name);
  if (env != nullptr && std::strcmp(env, "nhwc") == 0) return tag::nhwc;
  if (env != nullptr && std::strcmp(env, "blocked") == 0) return blocked;
  return otherwise;
}

}  // namespace

tag ActivationTag(dt act) {
  const tag blocked = BlockedActivationTag().first;
  if (blocked == tag::any) return blocked;
  if (act == dt::f32) {
    // Measured with benchmarks/profile_step.py (VGG16-BN at 32x32, AVX2 without AVX-512):
    // there oneDNN's brgemm convolutions on NHWC beat its direct jit kernels on nChw8c, by
    // about a quarter in inference and a tenth in training; with AVX-512 the direct kernels
    // on nChw16c are the faster (see PreferredFwdDesc in conv.cc).
    static const tag chosen = LayoutFromEnv("VGG_NATIVE_F32_LAYOUT", blocked,
                                            blocked == tag::nChw8c ? tag::nhwc : blocked);
    return chosen;
  }
  if (blocked != tag::nChw16c) return blocked;
  static const tag chosen_bf16 = LayoutFromEnv(
      "VGG_NATIVE_BF16_LAYOUT", tag::nChw16c,
      Runs(dnnl_cpu_isa_avx512_core_amx) ? tag::nhwc : tag::nChw16c);
  return chosen_bf16;
}

int64_t MatmulWeightsMaxPixels() {
  // Measured with benchmarks/profile_step.py (VGG16-BN at 32x32, batch 64, AVX-512 without
  // AMX): oneDNN's direct backward-weights kernels work image by image, and on outputs of 8x8
  // pixels and less run at a quarter to a half of the forward pass's rate in both precisions;
  // one matrix product over the whole batch does not. On AVX2 without AVX-512 (float32,
  // batch 128) the matrix product is 9x faster at 2x2 pixels and 2.6x at 4x4, but no faster
  // at 8x8, hence a lower limit there. In bfloat16 with AMX (NHWC activations, BRGEMM
  // kernels; batch 64) the same limit makes the training step 1.32x faster: oneDNN's AMX
  // backward-weights kernels took 42 % of the step, most of it on the 4x4 and 2x2 outputs.
  // Limits of 16, 64 and 256 pixels came within 5 % of one another there (one run each);
  // 64 keeps the im2col buffer of the 16x16 layers out of memory.
  static const int64_t from_env = [] {
    const char *env = std::getenv("VGG_NATIVE_MATMUL_WEIGHTS_MAX_PIXELS");
    return env != nullptr && env[0] != '\0' ? std::strtoll(env, nullptr, 10) : -1LL;
  }();
  if (from_env >= 0) return from_env;
  if (Runs(dnnl_cpu_isa_avx512_core)) return kMatmulWeightsMaxPixels;
  if (Runs(dnnl_cpu_isa_avx2)) return kMatmulWeightsMaxPixelsAvx2;
  return 0;
}

const char *Bf16Isa() {
  static const std::pair<dnnl_cpu_isa_t, const char *> kNames[] = {
      {dnnl_cpu_isa_avx10_2_512_amx_2, "avx10_2_512_amx_2"},
      {dnnl_cpu_isa_avx512_core_amx_fp16, "avx512_core_amx_fp16"},
      {dnnl_cpu_isa_avx512_core_amx, "avx512_core_amx"},
      {dnnl_cpu_isa_avx10_2_512, "avx10_2_512"},
      {dnnl_cpu_isa_avx512_core_fp16, "avx512_core_fp16"},
      {dnnl_cpu_isa_avx512_core_bf16, "avx512_core_bf16"},
  };
  for (const auto &isa : kNames)
    if (Runs(isa.first)) return isa.second;
  return "";
}

const char *DtName(dt d) {
  switch (d) {
    case dt::f32: return "f32";
    case dt::bf16: return "bf16";
    case dt::u8: return "u8";
    default: return "other";
  }
}

void *Arena::Get(int slot, size_t bytes) {
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

Engine &Engine::Get() {
  static Engine *instance = new Engine();  // never destroyed: worker threads outlive exit
  return *instance;
}

Engine::Engine()
    : eng_(dnnl::engine::kind::cpu, 0),
      nthreads_(DefaultThreads()),
      pool_(nthreads_),
      stream_(dnnl::threadpool_interop::make_stream(eng_, &pool_)) {}

void Engine::ParallelFor(int n, const std::function<void(int)> &fn) {
  pool_.parallel_for(n, [&](int i, int) { fn(i); });
}

int Engine::BlockSize() {
  const auto b = BlockedActivationTag();
  return b.first == tag::any ? 0 : static_cast<int>(b.second);
}

memory Engine::Bind(const Operand &op, const void *plain_ptr, int slot, bool reorder_in) {
  void *ptr = const_cast<void *>(plain_ptr);  // oneDNN memory objects take non-const handles
  if (!op.needs_reorder) return memory(op.plain, eng_, ptr);
  memory inner(op.inner, eng_, arena_.Get(slot, op.inner.get_size()));
  if (reorder_in) {
    memory plain(op.plain, eng_, ptr);
    op.to_inner.execute(stream_, plain, inner);
  }
  return inner;
}

void Engine::Finish(const Operand &op, memory inner, void *plain_ptr) {
  if (!op.needs_reorder) return;
  memory plain(op.plain, eng_, plain_ptr);
  op.to_plain.execute(stream_, inner, plain);
}

memory Engine::Scratch(size_t bytes) {
  const memory::desc desc({static_cast<memory::dim>(bytes)}, dt::u8, tag::x);
  return memory(desc, eng_, arena_.Get(kScratch, bytes ? bytes : 64));
}

memory::desc Engine::BlockedDesc(const memory::dims &dims, dt act) const {
  const auto b = BlockedActivationTag();
  if (b.first == tag::any || dims[1] % b.second != 0)
    throw std::runtime_error("channel count not a multiple of the activation block");
  if (act != dt::f32 && act != dt::bf16) throw std::runtime_error("activations must be f32 or bf16");
  return memory::desc(dims, act, ActivationTag(act));
}

void Engine::Describe(const char *what, const ConvShape &s, const char *impl) {
  if (IsReference(impl)) ++reference_kernels_;
  if (!Verbose()) return;
  std::fprintf(stderr, "vgg_native: %s %s n%ld c%ld h%ld w%ld o%ld k%ldx%ld pad%ld,%ld -> %s\n", what,
               DtName(s.act), (long)s.n, (long)s.c, (long)s.h, (long)s.w, (long)s.o, (long)s.kh,
               (long)s.kw, (long)s.pt, (long)s.pl, impl);
}

void Engine::Describe(const char *what, const memory::dims &dims, dt act, const char *impl) {
  if (IsReference(impl)) ++reference_kernels_;
  if (!Verbose()) return;
  std::fprintf(stderr, "vgg_native: %s %s", what, DtName(act));
  for (size_t i = 0; i < dims.size(); ++i) std::fprintf(stderr, "%s%ld", i ? "x" : " ", (long)dims[i]);
  std::fprintf(stderr, " -> %s\n", impl);
}

}  // namespace vgg_native
