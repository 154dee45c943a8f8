// WKV-7 recurrence on CUDA: forward, checkpointed backward and a single decoding step.
//
// Same recurrence and adjoint equations as csrc/wkv7_cpu.cpp (see the comment there). One block runs one
// (batch, head) pair with N threads. In the forward thread i owns row i of the state in registers: rows evolve
// independently, so a step needs only the shared key-side vectors. The backward keeps the adjoint G in shared
// memory and works it in two phases per step: thread i reduces along row i (dv, G b), then thread j along column
// j (dr, dk, db, dw, da) and updates that column of G. States are recomputed one chunk at a time from the
// checkpoints the forward stored every kChunk steps, into a per-block global workspace that stays in L2.
// Inputs may be float, half or bfloat16; all arithmetic and every state is float.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

namespace {

constexpr int kChunk = 16;

template <typename scalar_t>
__device__ __forceinline__ float to_float(scalar_t x) {
  return static_cast<float>(x);
}

// Offsets of one (batch, head) pair inside [B, T, H, N] tensors.
struct Layout {
  int steps, heads;
  __device__ int64_t at(int bh, int t, int n, int size) const {
    return ((int64_t(bh / heads) * steps + t) * heads + bh % heads) * size + n;
  }
};

// The per-step vectors every thread of a block reads, staged in shared memory.
template <int N>
struct StepVectors {
  float r[N], decay[N], k[N], v[N], a[N], b[N];
};

template <typename scalar_t, int N>
__device__ __forceinline__ void load_step(StepVectors<N>& s, const scalar_t* r, const scalar_t* w, const scalar_t* k,
                                          const scalar_t* v, const scalar_t* a, const scalar_t* b, int64_t idx,
                                          int i) {
  s.r[i] = to_float(r[idx]);
  s.decay[i] = expf(to_float(w[idx]));
  s.k[i] = to_float(k[idx]);
  s.v[i] = to_float(v[idx]);
  s.a[i] = to_float(a[idx]);
  s.b[i] = to_float(b[idx]);
}

// Advances row i of the state one step; returns (S_{t-1} a)_i.
template <int N>
__device__ __forceinline__ float advance_row(float (&row)[N], const StepVectors<N>& s, int i) {
  float sa = 0.f;
#pragma unroll
  for (int j = 0; j < N; ++j) sa += row[j] * s.a[j];
  const float vi = s.v[i];
#pragma unroll
  for (int j = 0; j < N; ++j) row[j] = row[j] * s.decay[j] + sa * s.b[j] + vi * s.k[j];
  return sa;
}

template <int N>
__device__ __forceinline__ float row_dot_r(const float (&row)[N], const StepVectors<N>& s) {
  float y = 0.f;
#pragma unroll
  for (int j = 0; j < N; ++j) y += row[j] * s.r[j];
  return y;
}

// checkpoints: [B*H, chunks, N, N], stored transposed ([j][i]) so that the row-owning threads write coalesced.
template <typename scalar_t, int N>
__global__ void forward_kernel(Layout layout, const scalar_t* __restrict__ r, const scalar_t* __restrict__ w,
                               const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                               const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                               const float* __restrict__ state0, scalar_t* __restrict__ y,
                               float* __restrict__ state_out, float* __restrict__ checkpoints) {
  const int bh = blockIdx.x, i = threadIdx.x, chunks = (layout.steps + kChunk - 1) / kChunk;
  __shared__ StepVectors<N> s;
  float row[N];
#pragma unroll
  for (int j = 0; j < N; ++j) row[j] = state0[(int64_t(bh) * N + i) * N + j];
  for (int t = 0; t < layout.steps; ++t) {
    if (t % kChunk == 0) {
      float* checkpoint = checkpoints + (int64_t(bh) * chunks + t / kChunk) * N * N;
#pragma unroll
      for (int j = 0; j < N; ++j) checkpoint[j * N + i] = row[j];
    }
    const int64_t idx = layout.at(bh, t, i, N);
    __syncthreads();  // every thread is done reading the previous step's vectors
    load_step(s, r, w, k, v, a, b, idx, i);
    __syncthreads();
    advance_row(row, s, i);
    y[idx] = static_cast<scalar_t>(row_dot_r(row, s));
  }
#pragma unroll
  for (int j = 0; j < N; ++j) state_out[(int64_t(bh) * N + i) * N + j] = row[j];
}

// workspace: [B*H, kChunk + 1, N, N] recomputed states in natural [i][j] layout, read by column (coalesced);
// state_a: [B*H, kChunk, N] the recomputed S_{t-1} a of each step.
template <typename scalar_t, int N>
__global__ void backward_kernel(Layout layout, const scalar_t* __restrict__ r, const scalar_t* __restrict__ w,
                                const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                const float* __restrict__ checkpoints, const scalar_t* __restrict__ grad_y,
                                const float* __restrict__ grad_state_out, scalar_t* __restrict__ dr,
                                scalar_t* __restrict__ dw, scalar_t* __restrict__ dk, scalar_t* __restrict__ dv,
                                scalar_t* __restrict__ da, scalar_t* __restrict__ db,
                                float* __restrict__ grad_state0, float* __restrict__ workspace,
                                float* __restrict__ workspace_state_a) {
  const int bh = blockIdx.x, tid = threadIdx.x, chunks = (layout.steps + kChunk - 1) / kChunk;
  __shared__ StepVectors<N> s;
  __shared__ float adjoint[N][N + 1];  // padded: both row and column sweeps are free of bank conflicts
  __shared__ float dy[N], state_a[N], dsa[N];
  float* states = workspace + int64_t(bh) * (kChunk + 1) * N * N;
  float* states_a = workspace_state_a + int64_t(bh) * kChunk * N;

  for (int j = 0; j < N; ++j) adjoint[tid][j] = grad_state_out[(int64_t(bh) * N + tid) * N + j];

  for (int chunk = chunks - 1; chunk >= 0; --chunk) {
    const int t0 = chunk * kChunk, len = min(kChunk, layout.steps - t0);
    // Recompute the chunk's states, thread tid owning row tid.
    const float* checkpoint = checkpoints + (int64_t(bh) * chunks + chunk) * N * N;
    float row[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      row[j] = checkpoint[j * N + tid];
      states[tid * N + j] = row[j];
    }
    for (int step = 0; step < len; ++step) {
      __syncthreads();
      load_step(s, r, w, k, v, a, b, layout.at(bh, t0 + step, tid, N), tid);
      __syncthreads();
      states_a[step * N + tid] = advance_row(row, s, tid);
      float* state = states + (step + 1) * N * N;
#pragma unroll
      for (int j = 0; j < N; ++j) state[tid * N + j] = row[j];
    }
    // Walk the chunk back in time.
    for (int step = len - 1; step >= 0; --step) {
      const int64_t idx = layout.at(bh, t0 + step, tid, N);
      __syncthreads();  // the recompute's and the previous step's reads of the shared vectors are done
      load_step(s, r, w, k, v, a, b, idx, tid);
      dy[tid] = to_float(grad_y[idx]);
      state_a[tid] = states_a[step * N + tid];
      __syncthreads();

      // Row phase, i = tid: G += dy r^T, dv = G k, dsa = G b.
      {
        const float dyi = dy[tid];
        float dv_i = 0.f, dsa_i = 0.f;
#pragma unroll 8
        for (int j = 0; j < N; ++j) {
          const float g = adjoint[tid][j] + dyi * s.r[j];
          adjoint[tid][j] = g;
          dv_i += g * s.k[j];
          dsa_i += g * s.b[j];
        }
        dv[idx] = static_cast<scalar_t>(dv_i);
        dsa[tid] = dsa_i;
      }
      __syncthreads();

      // Column phase, j = tid: column sums over i, then G_{t-1} = G * d + dsa a^T on column j.
      {
        const float* prev = states + step * N * N;
        const float* cur = prev + N * N;
        const float dj = s.decay[tid], aj = s.a[tid];
        float dr_j = 0.f, dk_j = 0.f, db_j = 0.f, dd_j = 0.f, da_j = 0.f;
#pragma unroll 8
        for (int i = 0; i < N; ++i) {
          const float g = adjoint[i][tid], sp = prev[i * N + tid];
          dr_j += cur[i * N + tid] * dy[i];
          dk_j += g * s.v[i];
          db_j += g * state_a[i];
          dd_j += g * sp;
          da_j += sp * dsa[i];
          adjoint[i][tid] = g * dj + dsa[i] * aj;
        }
        dr[idx] = static_cast<scalar_t>(dr_j);
        dk[idx] = static_cast<scalar_t>(dk_j);
        db[idx] = static_cast<scalar_t>(db_j);
        da[idx] = static_cast<scalar_t>(da_j);
        dw[idx] = static_cast<scalar_t>(dd_j * dj);  // d(decay) -> d(log decay)
      }
    }
    __syncthreads();  // the next chunk's recompute overwrites the workspace this chunk read
  }
  __syncthreads();  // with T = 0 no step ran, and the rows written above are read here as columns
  for (int i = 0; i < N; ++i) grad_state0[(int64_t(bh) * N + i) * N + tid] = adjoint[i][tid];
}

// One decoding step on [B*H, N] inputs; state_in and state_out are [B*H, N, N] and may not alias.
template <typename scalar_t, int N>
__global__ void step_kernel(const scalar_t* __restrict__ r, const scalar_t* __restrict__ w,
                            const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                            const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                            const float* __restrict__ state_in, scalar_t* __restrict__ y,
                            float* __restrict__ state_out) {
  const int bh = blockIdx.x, i = threadIdx.x;
  __shared__ StepVectors<N> s;
  load_step(s, r, w, k, v, a, b, int64_t(bh) * N + i, i);
  float row[N];
#pragma unroll
  for (int j = 0; j < N; ++j) row[j] = state_in[(int64_t(bh) * N + i) * N + j];
  __syncthreads();
  advance_row(row, s, i);
  y[int64_t(bh) * N + i] = static_cast<scalar_t>(row_dot_r(row, s));
#pragma unroll
  for (int j = 0; j < N; ++j) state_out[(int64_t(bh) * N + i) * N + j] = row[j];
}

void check_inputs(const std::vector<at::Tensor>& inputs, int64_t dims) {
  const auto& r = inputs[0];
  TORCH_CHECK(r.dim() == dims, "wkv7_cuda: expected ", dims, "-d inputs, got ", r.sizes());
  for (const auto& x : inputs) {
    TORCH_CHECK(x.is_cuda() && x.device() == r.device(), "wkv7_cuda: tensors must be on one CUDA device");
    TORCH_CHECK(x.scalar_type() == r.scalar_type(), "wkv7_cuda: r, w, k, v, a, b must share one dtype");
    TORCH_CHECK(x.is_contiguous(), "wkv7_cuda: tensors must be contiguous");
    TORCH_CHECK(x.sizes() == r.sizes(), "wkv7_cuda: r, w, k, v, a, b must share one shape");
  }
}

void check_state(const at::Tensor& state, const at::Tensor& r, int64_t batch, int64_t heads, int64_t size,
                 const char* what) {
  TORCH_CHECK(state.device() == r.device() && state.scalar_type() == at::kFloat && state.is_contiguous(),
              "wkv7_cuda: ", what, " must be a contiguous float32 tensor on the inputs' device");
  TORCH_CHECK(state.sizes() == at::IntArrayRef({batch, heads, size, size}), "wkv7_cuda: ", what,
              " must be [B, H, N, N], got ", state.sizes());
}

// Calls `body` with a compile-time head size; the kernels keep a state row in registers.
template <typename Body>
void dispatch_head_size(int64_t size, Body body) {
  switch (size) {
    case 16: return body(std::integral_constant<int, 16>{});
    case 32: return body(std::integral_constant<int, 32>{});
    case 64: return body(std::integral_constant<int, 64>{});
    default: TORCH_CHECK(false, "wkv7_cuda: head size N must be 16, 32 or 64, got ", size);
  }
}

#define WKV7_DISPATCH_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace

std::vector<at::Tensor> wkv7_cuda_forward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                          at::Tensor b, at::Tensor state0) {
  check_inputs({r, w, k, v, a, b}, 4);
  const int64_t batch = r.size(0), steps = r.size(1), heads = r.size(2), size = r.size(3);
  check_state(state0, r, batch, heads, size, "state0");
  const c10::cuda::CUDAGuard guard(r.device());
  auto y = at::empty_like(r);
  auto state_out = at::empty_like(state0);
  const int64_t chunks = (steps + kChunk - 1) / kChunk;
  auto checkpoints = at::empty({batch, heads, chunks, size, size}, state0.options());
  const Layout layout{static_cast<int>(steps), static_cast<int>(heads)};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (steps > 0) {
    WKV7_DISPATCH_TYPES(r.scalar_type(), "wkv7_cuda_forward", [&] {
      dispatch_head_size(size, [&](auto n) {
        forward_kernel<scalar_t, decltype(n)::value><<<batch * heads, decltype(n)::value, 0, stream>>>(
            layout, r.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
            a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), state0.data_ptr<float>(), y.data_ptr<scalar_t>(),
            state_out.data_ptr<float>(), checkpoints.data_ptr<float>());
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    state_out.copy_(state0);
  }
  return {y, state_out, checkpoints};
}

std::vector<at::Tensor> wkv7_cuda_backward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                           at::Tensor b, at::Tensor checkpoints, at::Tensor grad_y,
                                           at::Tensor grad_state_out) {
  check_inputs({r, w, k, v, a, b, grad_y}, 4);
  const int64_t batch = r.size(0), steps = r.size(1), heads = r.size(2), size = r.size(3);
  check_state(grad_state_out, r, batch, heads, size, "grad_state_out");
  const int64_t chunks = (steps + kChunk - 1) / kChunk;
  TORCH_CHECK(checkpoints.is_contiguous() && checkpoints.numel() == batch * heads * chunks * size * size,
              "wkv7_cuda: checkpoints do not match the inputs");
  const c10::cuda::CUDAGuard guard(r.device());
  std::vector<at::Tensor> grads;
  for (int i = 0; i < 6; ++i) grads.push_back(at::empty_like(r));
  auto grad_state0 = at::empty_like(grad_state_out);
  auto workspace = at::empty({batch * heads, kChunk + 1, size, size}, grad_state_out.options());
  auto workspace_state_a = at::empty({batch * heads, kChunk, size}, grad_state_out.options());
  const Layout layout{static_cast<int>(steps), static_cast<int>(heads)};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  WKV7_DISPATCH_TYPES(r.scalar_type(), "wkv7_cuda_backward", [&] {
    dispatch_head_size(size, [&](auto n) {
      backward_kernel<scalar_t, decltype(n)::value><<<batch * heads, decltype(n)::value, 0, stream>>>(
          layout, r.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), checkpoints.data_ptr<float>(),
          grad_y.data_ptr<scalar_t>(), grad_state_out.data_ptr<float>(), grads[0].data_ptr<scalar_t>(),
          grads[1].data_ptr<scalar_t>(), grads[2].data_ptr<scalar_t>(), grads[3].data_ptr<scalar_t>(),
          grads[4].data_ptr<scalar_t>(), grads[5].data_ptr<scalar_t>(), grad_state0.data_ptr<float>(),
          workspace.data_ptr<float>(), workspace_state_a.data_ptr<float>());
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  grads.push_back(grad_state0);
  return grads;
}

std::vector<at::Tensor> wkv7_cuda_step(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                       at::Tensor b, at::Tensor state) {
  check_inputs({r, w, k, v, a, b}, 3);
  const int64_t batch = r.size(0), heads = r.size(1), size = r.size(2);
  check_state(state, r, batch, heads, size, "state");
  const c10::cuda::CUDAGuard guard(r.device());
  auto y = at::empty_like(r);
  auto state_out = at::empty_like(state);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  WKV7_DISPATCH_TYPES(r.scalar_type(), "wkv7_cuda_step", [&] {
    dispatch_head_size(size, [&](auto n) {
      step_kernel<scalar_t, decltype(n)::value><<<batch * heads, decltype(n)::value, 0, stream>>>(
          r.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), state.data_ptr<float>(), y.data_ptr<scalar_t>(),
          state_out.data_ptr<float>());
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, state_out};
}
