// Python binding of the WKV-7 CUDA kernel (csrc/wkv7_cuda.cu); kept apart so nvcc never compiles pybind11.

#include <torch/extension.h>

#include <vector>

std::vector<at::Tensor> wkv7_cuda_forward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                          at::Tensor b, at::Tensor state0);
std::vector<at::Tensor> wkv7_cuda_backward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                           at::Tensor b, at::Tensor checkpoints, at::Tensor grad_y,
                                           at::Tensor grad_state_out);
std::vector<at::Tensor> wkv7_cuda_step(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                       at::Tensor b, at::Tensor state);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "WKV-7 recurrence, CUDA kernel";
  m.def("forward", &wkv7_cuda_forward, "WKV-7 forward: (r, w, k, v, a, b, state0) -> (y, state, checkpoints)");
  m.def("backward", &wkv7_cuda_backward,
        "WKV-7 backward: (r, w, k, v, a, b, checkpoints, grad_y, grad_state) -> (dr, dw, dk, dv, da, db, dstate0)");
  m.def("step", &wkv7_cuda_step, "WKV-7 single decoding step: (r, w, k, v, a, b, state) -> (y, new state)");
}
