// One whole RWKV-7 decoding step on the CPU: every block and the head, for one token per row, in one call.
//
// The twin is RWKV7.step (pianomuse/model.py) and this follows it line for line, fp32 and without autograd. In RNN
// mode each op works on a handful of rows, so the Python step spends most of its time dispatching ~100 small
// torch ops per block; here the matrix products go to small-batch kernels (csrc/small_batch_matmul.h) and
// everything between them runs as plain loops or whole-batch ATen calls.
// The state is updated in place: cloning a 0.5 MB WKV state (batch 8, L6 D256) took ~0.25 ms per block and step in
// page faults on the dev machine, more than the block's recurrence.

#include "small_batch_matmul.h"
#include "wkv7_cpu.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

using at::Tensor;

inline float dot(const float* x, const float* y, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += x[j] * y[j];
  return sum;
}

// One WKV-7 step on one head's state in the row layout (the rwkv package's, S[i][j], i = value dim), in place,
// writing y. The training kernel (wkv7_cpu.cpp) holds its state transposed; one token at a time, rows do as well.
inline void advance_state(float* state, const float* decay, const float* r, const float* k, const float* v,
                          const float* a, const float* b, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = state + i * n;
    const float sa = dot(row, a, n);
    const float vi = v[i];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] = row[j] * decay[j] + sa * b[j] + vi * k[j];
    y[i] = dot(row, r, n);
  }
}

// The flat weight list that pianomuse/kernels/decode.py builds: the model-wide tensors, then each block's.
// Slots a block does not have (ln0 after block 0; v0, v1, v2 in block 0) hold empty tensors.
enum GlobalWeight { kEmb, kLnOutWeight, kLnOutBias, kHead, kGlobalWeights };
enum LayerWeight {
  kLn0Weight, kLn0Bias, kLn1Weight, kLn1Bias, kLn2Weight, kLn2Bias,
  kMixR, kMixW, kMixK, kMixV, kMixA, kMixG,  // token-shift mixes of the time-mix inputs
  kW0, kW1, kW2, kA0, kA1, kA2, kV0, kV1, kV2, kG1, kG2,  // decay, ICLR, value-residual and gate LoRAs
  kKeyScale, kKeyIclr, kBonus,  // k_k, k_a, r_k
  kReceptance, kKey, kValue, kOutput, kLnXWeight, kLnXBias,
  kFfnMix, kFfnKey, kFfnValue,
  kLayerWeights
};
// The per-channel vectors that time_mix_head reads, at the head's channels.
constexpr int kPerChannel[] = {kKeyScale, kKeyIclr, kBonus, kLnXWeight, kLnXBias};

const float* data(const Tensor& t) { return t.data_ptr<float>(); }
float* data(Tensor& t) { return t.data_ptr<float>(); }

// Normalises each group of `size` consecutive values of x[0 .. count * size) to zero mean and unit variance, then
// applies the per-channel affine weight[c] * . + bias[c], c counted modulo `channels` (LayerNorm: size = channels;
// GroupNorm: size = one group). `out` may be x.
void normalize_groups(const float* x, float* out, int64_t count, int64_t size, int64_t channels, const float* weight,
                      const float* bias, float eps) {
  for (int64_t g = 0; g < count; ++g) {
    const float* xg = x + g * size;
    float* og = out + g * size;
    const int64_t c0 = (g * size) % channels;
    float mean = 0.f, var = 0.f;
    for (int64_t i = 0; i < size; ++i) mean += xg[i];
    mean /= size;
    for (int64_t i = 0; i < size; ++i) var += (xg[i] - mean) * (xg[i] - mean);
    const float scale = 1.f / std::sqrt(var / size + eps);
    for (int64_t i = 0; i < size; ++i) og[i] = (xg[i] - mean) * scale * weight[c0 + i] + bias[c0 + i];
  }
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  auto out = at::empty_like(x);
  normalize_groups(data(x), data(out), x.size(0), x.size(1), x.size(1), data(weight), data(bias), eps);
  return out;
}

// out[s] = x + (x_prev - x) * mix[s] for each of `mixes` per-channel mixes, over [B, C] rows: token shift by one.
Tensor token_shift_mixes(const Tensor& x, const Tensor& x_prev, const std::vector<const float*>& mix) {
  const int64_t rows = x.size(0), channels = x.size(1);
  auto out = at::empty({static_cast<int64_t>(mix.size()), rows, channels}, x.options());
  float* o = data(out);
  for (size_t s = 0; s < mix.size(); ++s) {
    for (int64_t row = 0; row < rows; ++row, o += channels) {
      const float *cur = data(x) + row * channels, *prev = data(x_prev) + row * channels;
      for (int64_t c = 0; c < channels; ++c) o[c] = cur[c] + (prev[c] - cur[c]) * mix[s][c];
    }
  }
  return out;
}

// The inputs of one (row, head) pair of a time-mix, as pointers to its first channel in [B, C] tensors.
struct HeadInputs {
  const float *r, *k, *decay, *iclr, *v_gate, *v_first, *g;  // v_gate: null in block 0 (no value residual)
  float* v;  // the value residual is mixed in place
};

// The rest of one head's time-mix after its projections and gates: value residual, key normalisation, the WKV-7
// state update, GroupNorm, the r-k bonus and the output gate. p are the block's weights offset by the head's first
// channel; y receives the gated output.
WKV7_VECTOR_CLONES void time_mix_head(const HeadInputs& in, const float* const* p, int64_t n, float ln_x_eps,
                                      float* state, float* y, float* scratch) {
  float *kk = scratch, *a = scratch + n, *b = scratch + 2 * n, *k = scratch + 3 * n;
  float norm = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    if (in.v_gate) in.v[j] += (in.v_first[j] - in.v[j]) * in.v_gate[j];
    kk[j] = in.k[j] * p[kKeyScale][j];
    norm += kk[j] * kk[j];
  }
  const float inv_norm = 1.f / std::max(std::sqrt(norm), 1e-12f);  // F.normalize's eps
  float bonus = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    kk[j] *= inv_norm;
    a[j] = -kk[j];
    b[j] = kk[j] * in.iclr[j];
    k[j] = in.k[j] * (1.f + (in.iclr[j] - 1.f) * p[kKeyIclr][j]);
    bonus += in.r[j] * k[j] * p[kBonus][j];
  }
  advance_state(state, in.decay, in.r, k, in.v, a, b, n, y);
  normalize_groups(y, y, 1, n, n, p[kLnXWeight], p[kLnXBias], ln_x_eps);
  for (int64_t j = 0; j < n; ++j) y[j] = (y[j] + bonus * in.v[j]) * in.g[j];
}

// x times an nn.Linear weight [out, in] (x @ w^T), and x times a LoRA matrix [in, out] (x @ w).
Tensor project(const Tensor& x, const Tensor& w) { return small_batch::matmul(x.contiguous(), w, true); }
Tensor lora(const Tensor& x, const Tensor& w) { return small_batch::matmul(x.contiguous(), w, false); }

void check_float_cpu(const Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "rwkv7 decode_step: ", what,
              " must be contiguous float32 CPU tensors");
}

}  // namespace

Tensor rwkv7_cpu_decode_step(Tensor idx, const std::vector<Tensor>& weights, std::vector<Tensor> state,
                             int64_t head_size, double ln_eps, double ln_x_eps) {
  // Everything is checked before the first state tensor is written, so a bad call changes nothing.
  TORCH_CHECK((weights.size() - kGlobalWeights) % kLayerWeights == 0 && weights.size() > kGlobalWeights,
              "rwkv7 decode_step: expected ", static_cast<int>(kGlobalWeights), " + n_layer x ",
              static_cast<int>(kLayerWeights), " weights, got ", weights.size());
  const int64_t layers = (weights.size() - kGlobalWeights) / kLayerWeights;
  TORCH_CHECK(static_cast<int64_t>(state.size()) == 3 * layers, "rwkv7 decode_step: expected 3 x ", layers,
              " state tensors, got ", state.size());
  TORCH_CHECK(idx.dim() == 1 && idx.scalar_type() == at::kLong, "rwkv7 decode_step: idx must be [B] int64");
  for (const auto& w : weights)
    if (w.defined() && w.numel()) check_float_cpu(w, "weights");
  TORCH_CHECK(weights[kEmb].dim() == 2, "rwkv7 decode_step: the embedding must be [V, C]");
  const int64_t rows = idx.size(0), channels = weights[kEmb].size(1), n = head_size;
  TORCH_CHECK(n > 0 && channels % n == 0, "rwkv7 decode_step: head size ", n, " does not divide ", channels);
  const int64_t heads = channels / n;
  for (int64_t l = 0; l < layers; ++l) {
    const Tensor* w = weights.data() + kGlobalWeights + l * kLayerWeights;
    for (int i : {kLn1Weight, kLn1Bias, kLn2Weight, kLn2Bias, kMixR, kMixW, kMixK, kMixV, kMixA, kMixG, kW0, kA0,
                  kKeyScale, kKeyIclr, kBonus, kLnXWeight, kLnXBias, kFfnMix})
      TORCH_CHECK(w[i].numel() == channels, "rwkv7 decode_step: block ", l, " weight ", i, " must have ", channels,
                  " values");
    for (int i : {kLn0Weight, kLn0Bias})
      TORCH_CHECK(w[i].numel() == (l == 0 ? channels : 0), "rwkv7 decode_step: ln0 belongs to block 0 only");
    TORCH_CHECK(w[kV0].numel() == (l == 0 ? 0 : channels), "rwkv7 decode_step: block 0 has no value residual");
    for (int i = 0; i < 3; ++i) check_float_cpu(state[3 * l + i], "states");
    TORCH_CHECK(state[3 * l].sizes() == at::IntArrayRef({rows, channels}) &&
                    state[3 * l + 1].sizes() == at::IntArrayRef({rows, heads, n, n}) &&
                    state[3 * l + 2].sizes() == at::IntArrayRef({rows, channels}),
                "rwkv7 decode_step: layer ", l, " state does not match [B, C], [B, H, N, N], [B, C]");
  }
  TORCH_CHECK(weights[kLnOutWeight].numel() == channels && weights[kLnOutBias].numel() == channels,
              "rwkv7 decode_step: ln_out must have ", channels, " values");
  // The state may come from a forward under torch.inference_mode(); writing it in place is allowed in that mode.
  c10::InferenceMode inference_mode;

  Tensor x = weights[kEmb].index_select(0, idx), v_first;
  for (int64_t l = 0; l < layers; ++l) {
    const Tensor* w = weights.data() + kGlobalWeights + l * kLayerWeights;
    if (l == 0) x = layer_norm(x, w[kLn0Weight], w[kLn0Bias], ln_eps);

    Tensor att_in = layer_norm(x, w[kLn1Weight], w[kLn1Bias], ln_eps);
    Tensor mixed = token_shift_mixes(att_in, state[3 * l],
                                     {data(w[kMixR]), data(w[kMixW]), data(w[kMixK]), data(w[kMixV]),
                                      data(w[kMixA]), data(w[kMixG])});
    Tensor r = project(mixed[0], w[kReceptance]), k = project(mixed[2], w[kKey]), v = project(mixed[3], w[kValue]);
    // Decay, ICLR and the value-residual gate for all rows at once, with ATen's vectorised sigmoid and exp.
    constexpr float kDecayScale = 0.60653066f;  // exp(-0.5): log decay = -exp(-0.5) * sigmoid(z), as in model.py
    Tensor decay = lora(at::tanh(lora(mixed[1], w[kW1])), w[kW2]);
    decay.add_(w[kW0]).sigmoid_().mul_(-kDecayScale).exp_();
    Tensor iclr = lora(lora(mixed[4], w[kA1]), w[kA2]).add_(w[kA0]).sigmoid_();
    Tensor g = lora(at::sigmoid(lora(mixed[5], w[kG1])), w[kG2]);
    Tensor v_gate;
    if (l == 0) {
      v_first = v;  // block 0 mixes no residual in, so v is never written after this
    } else {
      v_gate = lora(lora(mixed[3], w[kV1]), w[kV2]).add_(w[kV0]).sigmoid_();
    }

    Tensor& wkv = state[3 * l + 1];
    Tensor y = at::empty_like(att_in);
    at::parallel_for(0, rows * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(4 * n);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t offset = (bh / heads) * channels + (bh % heads) * n, c0 = (bh % heads) * n;
        const float* head_weights[kLayerWeights] = {};
        for (int i : kPerChannel) head_weights[i] = data(w[i]) + c0;
        const HeadInputs in{data(r) + offset, data(k) + offset, data(decay) + offset, data(iclr) + offset,
                            v_gate.defined() ? data(v_gate) + offset : nullptr, data(v_first) + offset,
                            data(g) + offset, data(v) + offset};
        time_mix_head(in, head_weights, n, static_cast<float>(ln_x_eps), data(wkv) + bh * n * n, data(y) + offset,
                      scratch.data());
      }
    });
    x.add_(project(y, w[kOutput]));

    Tensor ffn_in = layer_norm(x, w[kLn2Weight], w[kLn2Bias], ln_eps);
    Tensor hidden = project(token_shift_mixes(ffn_in, state[3 * l + 2], {data(w[kFfnMix])})[0], w[kFfnKey]);
    float* h = data(hidden);
    for (int64_t i = 0; i < hidden.numel(); ++i) h[i] = h[i] > 0.f ? h[i] * h[i] : 0.f;  // relu(.) ** 2
    x.add_(project(hidden, w[kFfnValue]));

    state[3 * l].copy_(att_in);
    state[3 * l + 2].copy_(ffn_in);
  }
  return project(layer_norm(x, weights[kLnOutWeight], weights[kLnOutBias], ln_eps), weights[kHead]);
}
