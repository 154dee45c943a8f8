// WKV-7 recurrence on the CPU: forward and checkpointed backward, one (batch, head) pair per task.
//
// Per step t, with d = exp(w_t) and the state S (rows i = value dim, columns j = key dim):
//   S_t = S_{t-1} * d[None, :] + (S_{t-1} a_t) b_t^T + v_t k_t^T,    y_t = S_t r_t
// Inside the kernel the state (and the backward's adjoint) is held transposed, column j of S contiguous, so that a
// vector runs over rows i: S a and S r add up in registers across j, with no horizontal (in-register) sums. At
// B2 T2048 H2 N64 on one thread that made the forward 2.5x and forward + backward 1.4x faster than the row layout
// (README, "Training step"); the decode step, one token at a time, keeps the row layout. The state and its gradient
// enter and leave in the row layout; the checkpoints are internal and stay transposed.
//
// Backward, with G the adjoint of S_t (gradient of the loss w.r.t. S_t) and sa = S_{t-1} a_t:
//   G  += dy_t r_t^T                   dr_t = S_t^T dy_t
//   dv_t = G k_t     dk_t = G^T v_t     dsa = G b_t     db_t = G^T sa
//   da_t = S_{t-1}^T dsa                dd[j] = sum_i G[i,j] S_{t-1}[i,j],   dw_t = dd * d
//   G_{t-1} = G * d[None, :] + dsa a_t^T
// The forward stores S every kChunk steps; the backward recomputes one chunk of states at a time from that
// checkpoint, so memory is O(T / kChunk * N^2) rather than O(T * N^2).

#include "wkv7_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kChunk = 32;

// Dimensions of one call and the pointer offsets of one (batch, head) pair inside [B, T, H, N] tensors.
struct Shape {
  int64_t batch, steps, heads, size;
  int64_t step_stride() const { return heads * size; }  // distance between t and t+1 of one head
  int64_t chunks() const { return (steps + kChunk - 1) / kChunk; }
  int64_t head_offset(int64_t bh) const { return (bh / heads) * steps * heads * size + (bh % heads) * size; }
};

WKV7_INLINE inline void exp_into(const float* w, float* decay, int64_t n) {
  for (int64_t j = 0; j < n; ++j) decay[j] = std::exp(w[j]);
}

// Transposes an n x n matrix in place: the state's row layout to the kernel's column layout and back.
WKV7_INLINE inline void transpose_square(float* m, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) std::swap(m[i * n + j], m[j * n + i]);
}

// Rows [i0, i0 + W) of one step on a transposed state: their sa and y are sums over j, kept in registers (W lanes)
// rather than in memory, where each += waited on the last one's store.
template <int64_t W>
WKV7_INLINE inline void advance_rows(float* columns, const float* decay, const float* r, const float* k,
                                     const float* v, const float* a, const float* b, int64_t n, int64_t i0,
                                     float* state_a, float* y) {
  float sa[W] = {}, sr[W] = {};
  for (int64_t j = 0; j < n; ++j) {
    const float* column = columns + j * n + i0;
    const float aj = a[j];
#pragma omp simd
    for (int64_t l = 0; l < W; ++l) sa[l] += column[l] * aj;
  }
  for (int64_t j = 0; j < n; ++j) {
    float* column = columns + j * n + i0;
    const float dj = decay[j], bj = b[j], kj = k[j], rj = r[j];
#pragma omp simd
    for (int64_t l = 0; l < W; ++l) {
      const float s = column[l] * dj + sa[l] * bj + v[i0 + l] * kj;
      column[l] = s;
      sr[l] += s * rj;
    }
  }
  for (int64_t l = 0; l < W; ++l) {
    if (state_a) state_a[i0 + l] = sa[l];
    if (y) y[i0 + l] = sr[l];
  }
}

// Calls block(width, i0) over the n rows in blocks of 64, then 16, then single rows (a head size of 64 is four
// AVX-512 registers); width is a std::integral_constant, so that each block size is its own unrolled loop.
template <typename Block>
WKV7_INLINE inline void for_row_blocks(int64_t n, const Block& block) {
  int64_t i0 = 0;
  for (; i0 + 64 <= n; i0 += 64) block(std::integral_constant<int64_t, 64>{}, i0);
  for (; i0 + 16 <= n; i0 += 16) block(std::integral_constant<int64_t, 16>{}, i0);
  for (; i0 < n; ++i0) block(std::integral_constant<int64_t, 1>{}, i0);
}

// Advances a transposed state (columns[j * n + i] = S[i][j]) by one step in place; stores S_{t-1} a into state_a
// and y into y (either may be skipped).
WKV7_INLINE inline void advance_columns(float* columns, const float* decay, const float* r, const float* k,
                                        const float* v, const float* a, const float* b, int64_t n, float* state_a,
                                        float* y) {
  for_row_blocks(n, [&](auto width, int64_t i0) WKV7_INLINE {
    advance_rows<width()>(columns, decay, r, k, v, a, b, n, i0, state_a, y);
  });
}

WKV7_INLINE inline void forward_head(const Shape& s, int64_t bh, const float* r, const float* w, const float* k,
                                     const float* v, const float* a, const float* b, float* y, float* state,
                                     float* checkpoints) {
  const int64_t n = s.size, nn = n * n, base = s.head_offset(bh);
  std::vector<float> decay(n);
  transpose_square(state, n);
  for (int64_t t = 0; t < s.steps; ++t) {
    if (t % kChunk == 0) std::memcpy(checkpoints + (t / kChunk) * nn, state, nn * sizeof(float));
    const int64_t at = base + t * s.step_stride();
    exp_into(w + at, decay.data(), n);
    advance_columns(state, decay.data(), r + at, k + at, v + at, a + at, b + at, n, nullptr, y + at);
  }
  transpose_square(state, n);
}

struct Grads {
  float *r, *w, *k, *v, *a, *b;
};

// One backward step for rows [i0, i0 + W) of the transposed adjoint (see advance_columns): G's rows take dy_t r_t^T,
// the row sums dv and dsa stay in registers, and the column sums over i add this block's share into the step's
// (zeroed) dk, db, dd, dr and da.
template <int64_t W>
WKV7_INLINE inline void backward_rows(float* adjoint, const float* prev, const float* cur, const float* decay,
                                      const float* r, const float* k, const float* v, const float* a, const float* b,
                                      const float* sa, const float* dy, int64_t n, int64_t i0, const Grads& g,
                                      int64_t at) {
  float dv[W] = {}, dsa[W] = {};
  for (int64_t j = 0; j < n; ++j) {
    float* adj = adjoint + j * n + i0;
    const float *prev_column = prev + j * n + i0, *cur_column = cur + j * n + i0;
    const float rj = r[j], kj = k[j], bj = b[j];
    float dk = 0.f, db = 0.f, dd = 0.f, dr = 0.f;
#pragma omp simd reduction(+ : dk, db, dd, dr)
    for (int64_t l = 0; l < W; ++l) {
      const float gij = adj[l] + dy[i0 + l] * rj;
      adj[l] = gij;
      dv[l] += gij * kj;
      dsa[l] += gij * bj;
      dk += gij * v[i0 + l];
      db += gij * sa[i0 + l];
      dd += gij * prev_column[l];
      dr += cur_column[l] * dy[i0 + l];
    }
    g.k[at + j] += dk;
    g.b[at + j] += db;
    g.w[at + j] += dd;
    g.r[at + j] += dr;
  }
  for (int64_t j = 0; j < n; ++j) {
    float* adj = adjoint + j * n + i0;
    const float* prev_column = prev + j * n + i0;
    const float dj = decay[j], aj = a[j];
    float da = 0.f;
#pragma omp simd reduction(+ : da)
    for (int64_t l = 0; l < W; ++l) {
      da += prev_column[l] * dsa[l];
      adj[l] = adj[l] * dj + dsa[l] * aj;
    }
    g.a[at + j] += da;
  }
  for (int64_t l = 0; l < W; ++l) g.v[at + i0 + l] = dv[l];
}

WKV7_INLINE inline void backward_head(const Shape& s, int64_t bh, const float* r, const float* w, const float* k,
                                      const float* v, const float* a, const float* b, const float* checkpoints,
                                      const float* grad_y, float* adjoint, const Grads& g) {
  const int64_t n = s.size, nn = n * n, base = s.head_offset(bh);
  // states[0] is the checkpoint before the chunk, states[s + 1] the state after its step s; the recompute keeps each
  // step's sa and decay for the backward.
  std::vector<float> states((kChunk + 1) * nn), state_a(kChunk * n), decays(kChunk * n);
  transpose_square(adjoint, n);
  for (int64_t chunk = s.chunks() - 1; chunk >= 0; --chunk) {
    const int64_t t0 = chunk * kChunk, len = std::min(kChunk, s.steps - t0);
    std::memcpy(states.data(), checkpoints + chunk * nn, nn * sizeof(float));
    for (int64_t step = 0; step < len; ++step) {
      const int64_t at = base + (t0 + step) * s.step_stride();
      float* state = states.data() + (step + 1) * nn;
      float* decay = decays.data() + step * n;
      std::memcpy(state, state - nn, nn * sizeof(float));
      exp_into(w + at, decay, n);
      advance_columns(state, decay, r + at, k + at, v + at, a + at, b + at, n, state_a.data() + step * n, nullptr);
    }
    for (int64_t step = len - 1; step >= 0; --step) {
      const int64_t at = base + (t0 + step) * s.step_stride();
      const float *prev = states.data() + step * nn, *cur = prev + nn, *sa = state_a.data() + step * n;
      const float *rt = r + at, *kt = k + at, *vt = v + at, *at_ = a + at, *bt = b + at, *dy = grad_y + at;
      const float* decay = decays.data() + step * n;
      for_row_blocks(n, [&](auto width, int64_t i0) WKV7_INLINE {
        backward_rows<width()>(adjoint, prev, cur, decay, rt, kt, vt, at_, bt, sa, dy, n, i0, g, at);
      });
      for (int64_t j = 0; j < n; ++j) g.w[at + j] *= decay[j];  // d(decay) -> d(log decay)
    }
  }
  transpose_square(adjoint, n);
}

Shape check_inputs(const std::vector<at::Tensor>& inputs) {
  const auto& r = inputs[0];
  TORCH_CHECK(r.dim() == 4, "wkv7_cpu: inputs must be [B, T, H, N], got ", r.sizes());
  for (const auto& x : inputs) {
    TORCH_CHECK(x.device().is_cpu(), "wkv7_cpu: tensors must be on the CPU");
    TORCH_CHECK(x.scalar_type() == at::kFloat, "wkv7_cpu: tensors must be float32, got ", x.scalar_type());
    TORCH_CHECK(x.is_contiguous(), "wkv7_cpu: tensors must be contiguous");
    TORCH_CHECK(x.sizes() == r.sizes(), "wkv7_cpu: r, w, k, v, a, b must share one shape");
  }
  return Shape{r.size(0), r.size(1), r.size(2), r.size(3)};
}

void check_state(const at::Tensor& state, const Shape& s, const char* what) {
  TORCH_CHECK(state.device().is_cpu() && state.scalar_type() == at::kFloat && state.is_contiguous(), "wkv7_cpu: ",
              what, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(state.sizes() == at::IntArrayRef({s.batch, s.heads, s.size, s.size}), "wkv7_cpu: ", what,
              " must be [B, H, N, N], got ", state.sizes());
}

}  // namespace

// Returns y [B, T, H, N], the final state [B, H, N, N] and the (transposed) checkpoints [B, H, ceil(T / kChunk), N, N].
std::vector<at::Tensor> wkv7_cpu_forward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                         at::Tensor b, at::Tensor state0) {
  const Shape s = check_inputs({r, w, k, v, a, b});
  check_state(state0, s, "state0");
  auto y = at::empty_like(r);
  auto state = state0.clone();
  auto checkpoints = at::empty({s.batch, s.heads, s.chunks(), s.size, s.size}, r.options());
  const int64_t nn = s.size * s.size;
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    run_vectorised([&]() WKV7_INLINE {
      for (int64_t bh = begin; bh < end; ++bh) {
        forward_head(s, bh, r.data_ptr<float>(), w.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                     a.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(), state.data_ptr<float>() + bh * nn,
                     checkpoints.data_ptr<float>() + bh * s.chunks() * nn);
      }
    });
  });
  return {y, state, checkpoints};
}

// Returns the gradients of r, w, k, v, a, b and the initial state.
std::vector<at::Tensor> wkv7_cpu_backward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                          at::Tensor b, at::Tensor checkpoints, at::Tensor grad_y,
                                          at::Tensor grad_state_out) {
  const Shape s = check_inputs({r, w, k, v, a, b, grad_y});
  check_state(grad_state_out, s, "grad_state_out");
  TORCH_CHECK(checkpoints.is_contiguous() && checkpoints.numel() == s.batch * s.heads * s.chunks() * s.size * s.size,
              "wkv7_cpu: checkpoints do not match the inputs");
  std::vector<at::Tensor> grads;
  for (int i = 0; i < 6; ++i) grads.push_back(at::zeros_like(r));  // row blocks add into them
  auto grad_state0 = grad_state_out.clone();  // the adjoint, walked back to t = -1 in place
  const Grads g{grads[0].data_ptr<float>(), grads[1].data_ptr<float>(), grads[2].data_ptr<float>(),
                grads[3].data_ptr<float>(), grads[4].data_ptr<float>(), grads[5].data_ptr<float>()};
  const int64_t nn = s.size * s.size;
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    run_vectorised([&]() WKV7_INLINE {
      for (int64_t bh = begin; bh < end; ++bh) {
        backward_head(s, bh, r.data_ptr<float>(), w.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                      a.data_ptr<float>(), b.data_ptr<float>(), checkpoints.data_ptr<float>() + bh * s.chunks() * nn,
                      grad_y.data_ptr<float>(), grad_state0.data_ptr<float>() + bh * nn, g);
      }
    });
  });
  grads.push_back(grad_state0);
  return grads;
}
