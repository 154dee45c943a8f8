// Matrix products of a few rows (the streams of one decoding step) by a weight matrix: one pass over the weights per
// 8 rows.
//
// With a handful of rows BLAS spends more time packing and re-reading the weights than multiplying (see the README's
// completion benchmark). Here each weight row is loaded once and multiplied into up to 8 input rows while it is in
// registers. GCC/Clang vector extensions give 8-float SIMD (AVX2 in the x86-64-v3 clone on x86-64 GCC); MSVC, and
// widths that are not a multiple of 8, use ATen. A row's result never depends on how many rows run beside it.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "wkv7_cpu.h"

namespace small_batch {

#if defined(__GNUC__) || defined(__clang__)
#define SMALL_BATCH_VECTORS 1

// Loads and stores go through memcpy (unaligned, and no function taking or returning a vector: that would be an
// AVX-ABI function in the baseline clone).
typedef float Vec8 __attribute__((vector_size(32)));

// y[m, n] = sum_k x[m, k] w[n, k] for R rows and n in [n0, n1): w in nn.Linear's [out, in] layout, in % 8 == 0.
template <int R>
WKV7_VECTOR_CLONES void times_transposed(const float* x, const float* w, float* y, int64_t in, int64_t out,
                                         int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* wn = w + n * in;
    Vec8 acc[R];
    for (int m = 0; m < R; ++m) acc[m] = Vec8{};
    for (int64_t k = 0; k < in; k += 8) {
      Vec8 wk, xk;
      std::memcpy(&wk, wn + k, sizeof wk);
      for (int m = 0; m < R; ++m) {
        std::memcpy(&xk, x + m * in + k, sizeof xk);
        acc[m] += wk * xk;
      }
    }
    for (int m = 0; m < R; ++m) {
      const Vec8 a = acc[m];
      y[m * out + n] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    }
  }
}

// y[m, n] = sum_k x[m, k] w[k, n] for R rows and the 8-column blocks n in [n0, n1): w in [in, out] layout (the
// LoRA matrices), out % 8 == 0.
template <int R>
WKV7_VECTOR_CLONES void times_plain(const float* x, const float* w, float* y, int64_t in, int64_t out, int64_t n0,
                                    int64_t n1) {
  for (int64_t n = n0; n < n1; n += 8) {
    Vec8 acc[R];
    for (int m = 0; m < R; ++m) acc[m] = Vec8{};
    for (int64_t k = 0; k < in; ++k) {
      Vec8 wk;
      std::memcpy(&wk, w + k * out + n, sizeof wk);
      for (int m = 0; m < R; ++m) acc[m] += wk * x[m * in + k];
    }
    for (int m = 0; m < R; ++m) std::memcpy(y + m * out + n, &acc[m], sizeof acc[m]);
  }
}

using Kernel = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t);

inline Kernel transposed_kernel(int64_t rows) {
  static const Kernel kernels[] = {times_transposed<1>, times_transposed<2>, times_transposed<3>,
                                   times_transposed<4>, times_transposed<5>, times_transposed<6>,
                                   times_transposed<7>, times_transposed<8>};
  return kernels[rows - 1];
}

inline Kernel plain_kernel(int64_t rows) {
  static const Kernel kernels[] = {times_plain<1>, times_plain<2>, times_plain<3>, times_plain<4>,
                                   times_plain<5>, times_plain<6>, times_plain<7>, times_plain<8>};
  return kernels[rows - 1];
}
#endif

// x [B, in] times w: w^T for an nn.Linear weight w [out, in] (transposed = true), else w [in, out]. Contiguous
// float32 CPU tensors.
inline at::Tensor matmul(const at::Tensor& x, const at::Tensor& w, bool transposed) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(transposed ? 1 : 0), "small_batch::matmul: ",
              x.sizes(), " times ", transposed ? "the transpose of " : "", w.sizes(), " does not fit");
#ifdef SMALL_BATCH_VECTORS
  const int64_t rows = x.size(0), in = x.size(1), out = transposed ? w.size(0) : w.size(1);
  if ((transposed ? in : out) % 8 == 0) {
    auto y = at::empty({rows, out}, x.options());
    const float *xs = x.data_ptr<float>(), *ws = w.data_ptr<float>();
    float* ys = y.data_ptr<float>();
    // Threads split the output columns (in 8-column blocks for the plain layout); rows go 8 at a time.
    const int64_t step = transposed ? 1 : 8, columns = out / step;
    at::parallel_for(0, columns, 16, [&](int64_t begin, int64_t end) {
      for (int64_t m = 0; m < rows; m += 8) {
        const int64_t r = std::min<int64_t>(8, rows - m);
        const Kernel kernel = transposed ? transposed_kernel(r) : plain_kernel(r);
        kernel(xs + m * in, ws, ys + m * out, in, out, begin * step, end * step);
      }
    });
    return y;
  }
#endif
  return transposed ? at::linear(x, w) : at::mm(x, w);
}

}  // namespace small_batch
