// The WKV-7 inputs RWKV-7 derives from its key on the CPU, fused: forward and backward each read their inputs once.
//
// For k, iclr [B, T, C] (C = H heads of N channels) and the per-channel parameters k_k, k_a [C]:
//   u = k * k_k,   kk = u / max(|u|, eps) per head (F.normalize),   a = -kk,   b = kk * iclr,
//   k' = k * (1 + (iclr - 1) * k_a)
// Backward, with ga, gb, gk' the gradients of a, b, k':
//   gkk = gb * iclr - ga,   du = (gkk - kk <gkk, kk>) / |u| per head (gkk / eps where |u| <= eps),
//   dk = gk' (1 + (iclr - 1) k_a) + du k_k,   diclr = gb kk + gk' k k_a,
//   dk_k = sum_rows du k,   dk_a = sum_rows gk' k (iclr - 1)
// Unfused, autograd runs about a dozen passes over [B, T, C] forward and twice that backward. Rows are split into
// fixed blocks of kRows; dk_k and dk_a are summed per block and the blocks' sums added in block order, so the
// result does not depend on the number of threads.

#include "wkv7_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kRows = 64;
constexpr float kEps = 1e-12f;  // F.normalize's default

struct KeyDims {
  int64_t rows, channels, head_size;
  int64_t blocks() const { return (rows + kRows - 1) / kRows; }
};

// 1 / max(|u|, eps) of one head's u = k * k_k, and whether the norm was clamped.
WKV7_INLINE inline float inverse_norm(const float* k, const float* k_k, int64_t n, bool* clamped) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += (k[j] * k_k[j]) * (k[j] * k_k[j]);
  const float norm = std::sqrt(sum);
  *clamped = !(norm > kEps);
  return 1.f / std::max(norm, kEps);
}

WKV7_INLINE inline void forward_block(const KeyDims& d, int64_t block, const float* k, const float* iclr,
                                      const float* k_k, const float* k_a, float* k_out, float* a, float* b) {
  const int64_t C = d.channels, N = d.head_size;
  for (int64_t row = block * kRows; row < std::min(d.rows, (block + 1) * kRows); ++row) {
    for (int64_t h = 0; h < C; h += N) {
      const int64_t at = row * C + h;
      bool clamped;
      const float inv = inverse_norm(k + at, k_k + h, N, &clamped);
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        const float kj = k[at + j], ij = iclr[at + j], kk = kj * k_k[h + j] * inv;
        a[at + j] = -kk;
        b[at + j] = kk * ij;
        k_out[at + j] = kj * (1.f + (ij - 1.f) * k_a[h + j]);
      }
    }
  }
}

WKV7_INLINE inline void backward_block(const KeyDims& d, int64_t block, const float* k, const float* iclr,
                                       const float* k_k, const float* k_a, const float* gk_out, const float* ga,
                                       const float* gb, float* dk, float* diclr, float* dk_k_block,
                                       float* dk_a_block) {
  const int64_t C = d.channels, N = d.head_size;
  std::vector<float> gkk(N);
  for (int64_t row = block * kRows; row < std::min(d.rows, (block + 1) * kRows); ++row) {
    for (int64_t h = 0; h < C; h += N) {
      const int64_t at = row * C + h;
      bool clamped;
      const float inv = inverse_norm(k + at, k_k + h, N, &clamped);
      float projection = 0.f;  // <gkk, kk>
#pragma omp simd reduction(+ : projection)
      for (int64_t j = 0; j < N; ++j) {
        gkk[j] = gb[at + j] * iclr[at + j] - ga[at + j];
        projection += gkk[j] * k[at + j] * k_k[h + j] * inv;
      }
      if (clamped) projection = 0.f;  // the clamped norm is a constant: no gradient flows through it
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        const float kj = k[at + j], ij = iclr[at + j], g = gk_out[at + j], kk = kj * k_k[h + j] * inv;
        const float du = (gkk[j] - kk * projection) * inv;
        dk[at + j] = g * (1.f + (ij - 1.f) * k_a[h + j]) + du * k_k[h + j];
        diclr[at + j] = gb[at + j] * kk + g * kj * k_a[h + j];
        dk_k_block[h + j] += du * kj;
        dk_a_block[h + j] += g * kj * (ij - 1.f);
      }
    }
  }
}

KeyDims check_key_inputs(const at::Tensor& k, const at::Tensor& iclr, const at::Tensor& k_k, const at::Tensor& k_a,
                         int64_t head_size) {
  for (const auto* t : {&k, &iclr, &k_k, &k_a}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "wkv_keys_cpu: tensors must be contiguous float32 CPU tensors");
  }
  TORCH_CHECK(k.dim() == 3 && iclr.sizes() == k.sizes(), "wkv_keys_cpu: k and iclr must be one [B, T, C] shape, got ",
              k.sizes(), " and ", iclr.sizes());
  const int64_t C = k.size(2);
  TORCH_CHECK(k_k.numel() == C && k_a.numel() == C, "wkv_keys_cpu: k_k and k_a must have C = ", C, " values");
  TORCH_CHECK(head_size > 0 && C % head_size == 0, "wkv_keys_cpu: C = ", C, " is not a multiple of head_size ",
              head_size);
  return KeyDims{k.size(0) * k.size(1), C, head_size};
}

}  // namespace

std::vector<at::Tensor> wkv_keys_cpu_forward(at::Tensor k, at::Tensor iclr, at::Tensor k_k, at::Tensor k_a,
                                             int64_t head_size) {
  const KeyDims d = check_key_inputs(k, iclr, k_k, k_a, head_size);
  auto k_out = at::empty_like(k), a = at::empty_like(k), b = at::empty_like(k);
  at::parallel_for(0, d.blocks(), 1, [&](int64_t begin, int64_t end) {
    run_vectorised([&]() WKV7_INLINE {
      for (int64_t block = begin; block < end; ++block)
        forward_block(d, block, k.data_ptr<float>(), iclr.data_ptr<float>(), k_k.data_ptr<float>(),
                      k_a.data_ptr<float>(), k_out.data_ptr<float>(), a.data_ptr<float>(), b.data_ptr<float>());
    });
  });
  return {k_out, a, b};
}

// Returns dk, diclr, dk_k and dk_a (the last two shaped like k_k and k_a).
std::vector<at::Tensor> wkv_keys_cpu_backward(at::Tensor k, at::Tensor iclr, at::Tensor k_k, at::Tensor k_a,
                                              int64_t head_size, at::Tensor grad_k_out, at::Tensor grad_a,
                                              at::Tensor grad_b) {
  const KeyDims d = check_key_inputs(k, iclr, k_k, k_a, head_size);
  for (const auto* g : {&grad_k_out, &grad_a, &grad_b}) {
    TORCH_CHECK(g->scalar_type() == at::kFloat && g->is_contiguous() && g->sizes() == k.sizes(),
                "wkv_keys_cpu: each gradient must be a contiguous float32 tensor shaped like k");
  }
  auto dk = at::empty_like(k), diclr = at::empty_like(k);
  auto param_blocks = at::zeros({d.blocks(), 2, d.channels}, k.options());
  at::parallel_for(0, d.blocks(), 1, [&](int64_t begin, int64_t end) {
    run_vectorised([&]() WKV7_INLINE {
      for (int64_t block = begin; block < end; ++block) {
        float* sums = param_blocks.data_ptr<float>() + block * 2 * d.channels;
        backward_block(d, block, k.data_ptr<float>(), iclr.data_ptr<float>(), k_k.data_ptr<float>(),
                       k_a.data_ptr<float>(), grad_k_out.data_ptr<float>(), grad_a.data_ptr<float>(),
                       grad_b.data_ptr<float>(), dk.data_ptr<float>(), diclr.data_ptr<float>(), sums,
                       sums + d.channels);
      }
    });
  });
  auto totals = at::zeros({2, d.channels}, k.options());
  sum_blocks_in_order(param_blocks.data_ptr<float>(), d.blocks(), 2 * d.channels, totals.data_ptr<float>());
  return {dk, diclr, totals[0].reshape(k_k.sizes()).clone(), totals[1].reshape(k_a.sizes()).clone()};
}
