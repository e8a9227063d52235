// The one validation routine behind every implementation (CPU, CUDA and the Meta/fake kernel):
// checks the arguments before anything runs and returns the output shape.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <vector>

namespace fusedconv {

struct ConvGeometry {
  int64_t stride[2];
  int64_t padding[2];
  int64_t dilation[2];
};

// Raises ValueError/TypeError/RuntimeError naming the offending argument. Sizes are SymInts
// so that the fake kernel works under torch.compile's dynamic shapes.
std::vector<c10::SymInt> check_forward_args(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& conv_bias,
    const at::Tensor& bias, const at::Tensor& scale, const std::optional<at::Tensor>& gn_weight,
    const std::optional<at::Tensor>& gn_bias, int64_t num_groups, double eps,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    ConvGeometry* geometry);

}  // namespace fusedconv
