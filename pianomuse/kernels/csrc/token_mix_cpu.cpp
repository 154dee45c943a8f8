// RWKV-7's token-shift mixes on the CPU, fused: forward and backward each read their inputs once.
//
// For x [B, T, C], the previous token's input prev[b, t] = x[b, t - 1] (t > 0) or x_prev[b] (t = 0; zeros when
// there is none) and M mixes mix [M, C]:
//   out_m[b, t, c] = x[b, t, c] + (prev[b, t, c] - x[b, t, c]) * mix[m, c]      (M separate [B, T, C] tensors)
// Backward, with g[m] the gradient of out_m:
//   dx[b, t]   = sum_m g[m, b, t] (1 - mix[m]) + sum_m g[m, b, t + 1] mix[m]   (second sum only for t + 1 < T)
//   dx_prev[b] = sum_m g[m, b, 0] mix[m]
//   dmix[m]    = sum_{b, t} g[m, b, t] (prev[b, t] - x[b, t])
// Rows (b, t) are split into fixed blocks of kRows; dmix is summed per block and the blocks' sums are added in
// block order, so the result does not depend on the number of threads.

#include "wkv7_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kRows = 64;

struct Dims {
  int64_t batch, steps, channels, mixes;
  int64_t rows() const { return batch * steps; }
  int64_t blocks() const { return (rows() + kRows - 1) / kRows; }
};

// The previous token's input row for row n (b = n / T, t = n % T), or nullptr for zeros.
WKV7_INLINE inline const float* previous_row(const Dims& d, const float* x, const float* x_prev, int64_t n) {
  if (n % d.steps) return x + (n - 1) * d.channels;
  return x_prev ? x_prev + (n / d.steps) * d.channels : nullptr;
}

WKV7_INLINE inline void forward_block(const Dims& d, int64_t block, const float* x, const float* x_prev,
                                      const float* mix, float* const* out) {
  const int64_t C = d.channels;
  for (int64_t n = block * kRows; n < std::min(d.rows(), (block + 1) * kRows); ++n) {
    const float *xn = x + n * C, *prev = previous_row(d, x, x_prev, n);
    for (int64_t m = 0; m < d.mixes; ++m) {
      const float* mm = mix + m * C;
      float* o = out[m] + n * C;
      if (prev) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = xn[c] + (prev[c] - xn[c]) * mm[c];
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = xn[c] - xn[c] * mm[c];
      }
    }
  }
}

// Adds sum_m g[m, n] * mix[m] into into[] (the part of row n's gradient that flows to the previous token).
WKV7_INLINE inline void to_previous(const Dims& d, const float* const* grad, const float* mix, int64_t n, float* into) {
  const int64_t C = d.channels;
  for (int64_t m = 0; m < d.mixes; ++m) {
    const float *g = grad[m] + n * C, *mm = mix + m * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) into[c] += g[c] * mm[c];
  }
}

WKV7_INLINE inline void backward_block(const Dims& d, int64_t block, const float* x, const float* x_prev,
                                       const float* mix, const float* const* grad, float* dx, float* dx_prev,
                                       float* dmix_block) {
  const int64_t C = d.channels;
  const int64_t first = block * kRows, end = std::min(d.rows(), (block + 1) * kRows);
  std::vector<float> diff(C);
  for (int64_t n = first; n < end; ++n) {
    const float *xn = x + n * C, *prev = previous_row(d, x, x_prev, n);
    float* dxn = dx + n * C;
    std::fill(dxn, dxn + C, 0.f);
    if ((n + 1) % d.steps) to_previous(d, grad, mix, n + 1, dxn);  // from the next token of the same sequence
    for (int64_t c = 0; c < C; ++c) diff[c] = (prev ? prev[c] : 0.f) - xn[c];
    for (int64_t m = 0; m < d.mixes; ++m) {
      const float *g = grad[m] + n * C, *mm = mix + m * C;
      float* dm = dmix_block + m * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        dxn[c] += g[c] * (1.f - mm[c]);
        dm[c] += g[c] * diff[c];
      }
    }
    if (n % d.steps == 0 && dx_prev) to_previous(d, grad, mix, n, dx_prev + (n / d.steps) * C);
  }
}

Dims check_mix_inputs(const at::Tensor& x, const c10::optional<at::Tensor>& x_prev, const at::Tensor& mix) {
  for (const auto* t : {&x, &mix}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "token_mix_cpu: tensors must be contiguous float32 CPU tensors");
  }
  TORCH_CHECK(x.dim() == 3 && mix.dim() == 2 && mix.size(1) == x.size(2), "token_mix_cpu: x must be [B, T, C] and ",
              "mix [M, C], got ", x.sizes(), " and ", mix.sizes());
  if (x_prev) {
    TORCH_CHECK(x_prev->device().is_cpu() && x_prev->scalar_type() == at::kFloat && x_prev->is_contiguous() &&
                    x_prev->sizes() == at::IntArrayRef({x.size(0), x.size(2)}),
                "token_mix_cpu: x_prev must be a contiguous float32 [B, C] CPU tensor");
  }
  return Dims{x.size(0), x.size(1), x.size(2), mix.size(0)};
}

}  // namespace

std::vector<at::Tensor> token_mix_cpu_forward(at::Tensor x, c10::optional<at::Tensor> x_prev, at::Tensor mix) {
  const Dims d = check_mix_inputs(x, x_prev, mix);
  std::vector<at::Tensor> out;
  std::vector<float*> out_ptrs;
  for (int64_t m = 0; m < d.mixes; ++m) {
    out.push_back(at::empty_like(x));
    out_ptrs.push_back(out.back().data_ptr<float>());
  }
  const float* prev = x_prev ? x_prev->data_ptr<float>() : nullptr;
  at::parallel_for(0, d.blocks(), 1, [&](int64_t begin, int64_t end) {
    run_vectorised([&]() WKV7_INLINE {
      for (int64_t block = begin; block < end; ++block)
        forward_block(d, block, x.data_ptr<float>(), prev, mix.data_ptr<float>(), out_ptrs.data());
    });
  });
  return out;
}

// Returns dx, dx_prev (empty when there is no x_prev) and dmix.
std::vector<at::Tensor> token_mix_cpu_backward(at::Tensor x, c10::optional<at::Tensor> x_prev, at::Tensor mix,
                                               const std::vector<at::Tensor>& grads) {
  const Dims d = check_mix_inputs(x, x_prev, mix);
  TORCH_CHECK(static_cast<int64_t>(grads.size()) == d.mixes, "token_mix_cpu: one gradient per mix");
  std::vector<const float*> grad_ptrs;
  for (const auto& g : grads) {
    TORCH_CHECK(g.scalar_type() == at::kFloat && g.is_contiguous() && g.sizes() == x.sizes(),
                "token_mix_cpu: each gradient must be a contiguous float32 [B, T, C] tensor");
    grad_ptrs.push_back(g.data_ptr<float>());
  }
  auto dx = at::empty_like(x);
  auto dx_prev = x_prev ? at::zeros_like(*x_prev) : at::empty({0}, x.options());
  auto dmix_blocks = at::zeros({d.blocks(), d.mixes, d.channels}, x.options());
  const float* prev = x_prev ? x_prev->data_ptr<float>() : nullptr;
  float* dprev = x_prev ? dx_prev.data_ptr<float>() : nullptr;
  at::parallel_for(0, d.blocks(), 1, [&](int64_t begin, int64_t end) {
    run_vectorised([&]() WKV7_INLINE {
      for (int64_t block = begin; block < end; ++block)
        backward_block(d, block, x.data_ptr<float>(), prev, mix.data_ptr<float>(), grad_ptrs.data(),
                       dx.data_ptr<float>(), dprev, dmix_blocks.data_ptr<float>() + block * d.mixes * d.channels);
    });
  });
  auto dmix = at::zeros_like(mix);
  sum_blocks_in_order(dmix_blocks.data_ptr<float>(), d.blocks(), d.mixes * d.channels, dmix.data_ptr<float>());
  return {dx, dx_prev, dmix};
}
