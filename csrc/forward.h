// The op's implementations, one per dispatch key, behind the schema in ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace fusedconv {

// fusedconv::forward, one declaration for the three implementations.
using ForwardFn = at::Tensor(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& conv_bias,
                             const at::Tensor& bias, const at::Tensor& scale,
                             const std::optional<at::Tensor>& gn_weight, const std::optional<at::Tensor>& gn_bias,
                             int64_t num_groups, double eps, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation);
ForwardFn forward_cpu;
ForwardFn forward_cuda;
ForwardFn forward_meta;

// Which images a CUDA device runs, e.g. "sm_90 cubin" or "sm_89 PTX"; images_for_arch answers
// for any compute capability (10 * major + minor), with no GPU.
std::string device_images(int64_t device);
std::string images_for_arch(int64_t arch);

}  // namespace fusedconv
