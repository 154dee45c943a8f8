// Python binding of the CPU kernels (csrc/wkv7_cpu.cpp, csrc/token_mix_cpu.cpp, csrc/wkv_keys_cpu.cpp,
// csrc/rwkv7_decode_cpu.cpp).

#include <torch/extension.h>

#include "wkv7_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "WKV-7 recurrence, token-shift mixes, WKV-7 key inputs and RWKV-7 decoding step, CPU kernels";
  m.def("forward", &wkv7_cpu_forward, "WKV-7 forward: (r, w, k, v, a, b, state0) -> (y, state, checkpoints)");
  m.def("backward", &wkv7_cpu_backward,
        "WKV-7 backward: (r, w, k, v, a, b, checkpoints, grad_y, grad_state) -> (dr, dw, dk, dv, da, db, dstate0)");
  m.def("token_mix_forward", &token_mix_cpu_forward,
        "token-shift mixes: (x, x_prev or None, mix [M, C]) -> M tensors like x");
  m.def("token_mix_backward", &token_mix_cpu_backward,
        "token-shift mixes backward: (x, x_prev or None, mix, M grads) -> (dx, dx_prev, dmix)");
  m.def("wkv_keys_forward", &wkv_keys_cpu_forward,
        "WKV-7 inputs from the key: (k, iclr, k_k [C], k_a [C], head_size) -> (k', a, b)");
  m.def("wkv_keys_backward", &wkv_keys_cpu_backward,
        "WKV-7 inputs from the key, backward: (k, iclr, k_k, k_a, head_size, dk', da, db) -> (dk, diclr, dk_k, dk_a)");
  m.def("decode_step", &rwkv7_cpu_decode_step,
        "RWKV-7 RNN step: (idx, weights, state, head_size, ln_eps, ln_x_eps) -> logits; the state advances in place");
}
