// The launch sequences of the four algorithms over the generated, typed launchers.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "cuda_driver.h"
#include "kernel_registry.h"
#include "policy.h"

namespace fusedconv {

// One call's operands and geometry, as the kernels take them: the sizes the kernels index in
// 32 bits already checked to fit (forward_cuda.cpp), the tensors contiguous where the kernels
// need them and kept alive by the caller for the launches.
struct Problem {
  int device;
  ImageSet set;
  const char* dtype;  // "fp32" | "fp16" | "bf16"
  const char* mode;   // rules::precision_mode
  CUstream stream;
  at::TensorOptions x_options;  // workspaces of x's dtype and device
  bool fp32;                    // x is float32: an fp32 output can hold the values to normalize

  int64_t n, c_in, h, w, c_out, kh, kw, h_out, w_out, hw_out;
  int64_t x_stride_w;  // x's column stride, which rules::conv_taps reads

  // Pointers; absent optional parameters point at `bias`, the kernels never read them.
  CUdeviceptr x, weight, conv_bias, bias, scale, gn_weight, gn_bias, y;
  // Kernel argument values, named as the kernels name them.
  int32_t C_in, C_out, H, W, H_out, W_out, HW_out, KH, KW, K_total;
  int64_t stride_xn;
  int32_t stride_xc, stride_xh, stride_xw;
  int32_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int32_t has_conv_bias, has_gn_weight, has_gn_bias;
  int32_t num_groups, channels_per_group;
  float eps;
};

// A tensor's data as a kernel pointer argument.
inline CUdeviceptr ptr(const at::Tensor& t) { return reinterpret_cast<CUdeviceptr>(t.data_ptr()); }

// A kernel argument's value, checked to fit the 32 bits the kernels index one sample with
// (only the batch offset is 64-bit); ValueError naming `what` otherwise.
int32_t i32(int64_t v, const char* what);

// Runs `choice` for `p`, writing y; throws a ValueError when a forced config cannot serve it.
void run(const Problem& p, const Choice& choice);

}  // namespace fusedconv
