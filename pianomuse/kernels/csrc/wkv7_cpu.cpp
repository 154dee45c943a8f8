// WKV-7 recurrence on the CPU: forward and checkpointed backward, one (batch, head) pair per task.
//
// Per step t, with d = exp(w_t) and the state S (rows i = value dim, columns j = key dim):
//   S_t = S_{t-1} * d[None, :] + (S_{t-1} a_t) b_t^T + v_t k_t^T,    y_t = S_t r_t
// Rows of S evolve independently, so every inner loop runs over a contiguous row j and vectorises.
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

inline void exp_into(const float* w, float* decay, int64_t n) {
  for (int64_t j = 0; j < n; ++j) decay[j] = std::exp(w[j]);
}

WKV7_VECTOR_CLONES void forward_head(const Shape& s, int64_t bh, const float* r, const float* w, const float* k,
                                     const float* v, const float* a, const float* b, float* y, float* state,
                                     float* checkpoints) {
  const int64_t n = s.size, nn = n * n, base = s.head_offset(bh);
  std::vector<float> decay(n);
  for (int64_t t = 0; t < s.steps; ++t) {
    if (t % kChunk == 0) std::memcpy(checkpoints + (t / kChunk) * nn, state, nn * sizeof(float));
    const int64_t at = base + t * s.step_stride();
    exp_into(w + at, decay.data(), n);
    advance_state(state, decay.data(), r + at, k + at, v + at, a + at, b + at, n, nullptr, y + at);
  }
}

struct Grads {
  float *r, *w, *k, *v, *a, *b;
};

WKV7_VECTOR_CLONES void backward_head(const Shape& s, int64_t bh, const float* r, const float* w, const float* k,
                                      const float* v, const float* a, const float* b, const float* checkpoints,
                                      const float* grad_y, float* adjoint, const Grads& g) {
  const int64_t n = s.size, nn = n * n, base = s.head_offset(bh);
  // states[0] is the checkpoint before the chunk, states[s + 1] the state after its step s.
  std::vector<float> states((kChunk + 1) * nn), state_a(kChunk * n), decay(n);
  for (int64_t chunk = s.chunks() - 1; chunk >= 0; --chunk) {
    const int64_t t0 = chunk * kChunk, len = std::min(kChunk, s.steps - t0);
    std::memcpy(states.data(), checkpoints + chunk * nn, nn * sizeof(float));
    for (int64_t step = 0; step < len; ++step) {
      const int64_t at = base + (t0 + step) * s.step_stride();
      float* state = states.data() + (step + 1) * nn;
      std::memcpy(state, state - nn, nn * sizeof(float));
      exp_into(w + at, decay.data(), n);
      advance_state(state, decay.data(), r + at, k + at, v + at, a + at, b + at, n, state_a.data() + step * n,
                    nullptr);
    }
    for (int64_t step = len - 1; step >= 0; --step) {
      const int64_t at = base + (t0 + step) * s.step_stride();
      const float *prev = states.data() + step * nn, *cur = prev + nn, *sa = state_a.data() + step * n;
      const float *rt = r + at, *kt = k + at, *vt = v + at, *at_ = a + at, *bt = b + at, *dy = grad_y + at;
      // Column sums over i accumulate straight into the (zero-initialised) per-step gradient outputs.
      float *dr = g.r + at, *dk = g.k + at, *db = g.b + at, *da = g.a + at, *dd = g.w + at;
      exp_into(w + at, decay.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        float* adj = adjoint + i * n;
        const float *prev_row = prev + i * n, *cur_row = cur + i * n;
        const float dyi = dy[i], vi = vt[i], sai = sa[i];
        float dv = 0.f, dsa = 0.f;
#pragma omp simd reduction(+ : dv, dsa)
        for (int64_t j = 0; j < n; ++j) {
          const float gij = adj[j] + dyi * rt[j];
          adj[j] = gij;
          dv += gij * kt[j];
          dsa += gij * bt[j];
        }
        g.v[at + i] = dv;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const float gij = adj[j], sp = prev_row[j];
          dr[j] += cur_row[j] * dyi;
          dk[j] += gij * vi;
          db[j] += gij * sai;
          dd[j] += gij * sp;
          da[j] += sp * dsa;
          adj[j] = gij * decay[j] + dsa * at_[j];
        }
      }
      for (int64_t j = 0; j < n; ++j) dd[j] *= decay[j];  // d(decay) -> d(log decay)
    }
  }
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

// Returns y [B, T, H, N], the final state [B, H, N, N] and the checkpoints [B, H, ceil(T / kChunk), N, N].
std::vector<at::Tensor> wkv7_cpu_forward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                         at::Tensor b, at::Tensor state0) {
  const Shape s = check_inputs({r, w, k, v, a, b});
  check_state(state0, s, "state0");
  auto y = at::empty_like(r);
  auto state = state0.clone();
  auto checkpoints = at::empty({s.batch, s.heads, s.chunks(), s.size, s.size}, r.options());
  const int64_t nn = s.size * s.size;
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      forward_head(s, bh, r.data_ptr<float>(), w.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                   a.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(), state.data_ptr<float>() + bh * nn,
                   checkpoints.data_ptr<float>() + bh * s.chunks() * nn);
    }
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
  for (int i = 0; i < 6; ++i) grads.push_back(at::zeros_like(r));
  auto grad_state0 = grad_state_out.clone();  // the adjoint, walked back to t = -1 in place
  const Grads g{grads[0].data_ptr<float>(), grads[1].data_ptr<float>(), grads[2].data_ptr<float>(),
                grads[3].data_ptr<float>(), grads[4].data_ptr<float>(), grads[5].data_ptr<float>()};
  const int64_t nn = s.size * s.size;
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      backward_head(s, bh, r.data_ptr<float>(), w.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                    a.data_ptr<float>(), b.data_ptr<float>(), checkpoints.data_ptr<float>() + bh * s.chunks() * nn,
                    grad_y.data_ptr<float>(), grad_state0.data_ptr<float>() + bh * nn, g);
    }
  });
  grads.push_back(grad_state0);
  return grads;
}
