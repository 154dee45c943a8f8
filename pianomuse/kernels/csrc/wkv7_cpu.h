// Shared by the CPU kernels: vector clones, a block-order sum, and the functions the Python binding exposes.
// Only ATen here: torch/extension.h (pybind11, autograd, nn) is for the binding file alone, as it is most of the
// compile time (the CPU extension builds in ~30 s instead of ~90 s on 2 cores).

#pragma once

#include <ATen/ATen.h>

#include <vector>

// GCC (11 or later: the x86-64-v3/v4 names) builds AVX-512 and AVX2+FMA clones of each per-head loop beside the
// baseline x86-64 one and picks at load time (AVX2 was about 2.5x faster than the baseline here; AVX-512 a little
// faster again on the shared development machine), so one build stays portable across the machines that share a
// kernel cache. The decode step keeps these clones (not re-measured with run_vectorised below).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && !defined(_WIN32)
#define WKV7_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define WKV7_VECTOR_CLONES
#endif

// The training kernels' loops: `run_vectorised(body)` runs body() compiled for AVX-512 (x86-64-v4) or AVX2+FMA
// (x86-64-v3) where this CPU has it, else for baseline x86-64, with one build. The body, a lambda marked
// WKV7_INLINE, and the functions it calls (WKV7_INLINE too) are inlined into a function with that target. In a
// standalone test with GCC 12 the WKV-7 loops ran 1.7-2.4x slower built as target_clones than this way (and as slowly
// again without -fno-semantic-interposition under -fPIC: pianomuse/kernels/toolchain.py).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && !defined(_WIN32)
#define WKV7_INLINE __attribute__((always_inline))
template <typename Body>
__attribute__((noinline, target("arch=x86-64-v4"))) void run_x86_64_v4(const Body& body) {
  body();
}
template <typename Body>
__attribute__((noinline, target("arch=x86-64-v3"))) void run_x86_64_v3(const Body& body) {
  body();
}
template <typename Body>
void run_vectorised(const Body& body) {
  static const bool v4 = __builtin_cpu_supports("x86-64-v4"), v3 = __builtin_cpu_supports("x86-64-v3");
  if (v4)
    run_x86_64_v4(body);
  else if (v3)
    run_x86_64_v3(body);
  else
    body();
}
#else
#define WKV7_INLINE
template <typename Body>
void run_vectorised(const Body& body) {
  body();
}
#endif

// Adds per-block partial sums [count, width] into total [width] in block order: a parameter gradient summed this
// way does not depend on which thread computed which block.
inline void sum_blocks_in_order(const float* blocks, int64_t count, int64_t width, float* total) {
  for (int64_t block = 0; block < count; ++block)
    for (int64_t i = 0; i < width; ++i) total[i] += blocks[block * width + i];
}

std::vector<at::Tensor> wkv7_cpu_forward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                         at::Tensor b, at::Tensor state0);
std::vector<at::Tensor> wkv7_cpu_backward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                          at::Tensor b, at::Tensor checkpoints, at::Tensor grad_y,
                                          at::Tensor grad_state_out);
// RWKV-7's token-shift mixes, fused (csrc/token_mix_cpu.cpp): x [B, T, C], x_prev [B, C] or none, mix [M, C] ->
// M tensors [B, T, C]; the backward takes their M gradients and returns dx, dx_prev (empty without x_prev), dmix.
std::vector<at::Tensor> token_mix_cpu_forward(at::Tensor x, c10::optional<at::Tensor> x_prev, at::Tensor mix);
std::vector<at::Tensor> token_mix_cpu_backward(at::Tensor x, c10::optional<at::Tensor> x_prev, at::Tensor mix,
                                               const std::vector<at::Tensor>& grads);
// The WKV-7 inputs from RWKV-7's key, fused (csrc/wkv_keys_cpu.cpp): k, iclr [B, T, C], k_k, k_a [C] -> k', a, b;
// the backward takes the gradients of k', a and b and returns dk, diclr, dk_k, dk_a.
std::vector<at::Tensor> wkv_keys_cpu_forward(at::Tensor k, at::Tensor iclr, at::Tensor k_k, at::Tensor k_a,
                                             int64_t head_size);
std::vector<at::Tensor> wkv_keys_cpu_backward(at::Tensor k, at::Tensor iclr, at::Tensor k_k, at::Tensor k_a,
                                              int64_t head_size, at::Tensor grad_k_out, at::Tensor grad_a,
                                              at::Tensor grad_b);
// One RNN-mode step of a whole RWKV-7 model (csrc/rwkv7_decode_cpu.cpp): returns the logits and advances the
// state (each block's att_x, wkv, ffn_x) in place.
at::Tensor rwkv7_cpu_decode_step(at::Tensor idx, const std::vector<at::Tensor>& weights, std::vector<at::Tensor> state,
                                 int64_t head_size, double ln_eps, double ln_x_eps);
