// The op's implementations, one per dispatch key, behind the schema in ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace fusedconv {

#define FUSEDCONV_FORWARD_PARAMS                                                               \
  const at::Tensor &x, const at::Tensor &weight, const std::optional<at::Tensor> &conv_bias,  \
      const at::Tensor &bias, const at::Tensor &scale,                                         \
      const std::optional<at::Tensor> &gn_weight, const std::optional<at::Tensor> &gn_bias,   \
      int64_t num_groups, double eps, at::IntArrayRef stride, at::IntArrayRef padding,         \
      at::IntArrayRef dilation

at::Tensor forward_cpu(FUSEDCONV_FORWARD_PARAMS);
at::Tensor forward_cuda(FUSEDCONV_FORWARD_PARAMS);
at::Tensor forward_meta(FUSEDCONV_FORWARD_PARAMS);

// Test and tuning hook: force one block config by name, a conv config (m*) or a resident one
// (r*, which also selects the resident algorithm); "" restores the heuristic.
void set_forced_config(const std::string& config);
std::string forced_config();

// Test and tuning hook: "materialize", "recompute", "channels_last" or "resident" ("" restores
// the default).
void set_forced_algorithm(const std::string& algorithm);
std::string forced_algorithm();

// The algorithm a call takes by default when the resident kernel does not: mode is "accurate",
// "tf32" or "native" (16-bit inputs).
std::string default_algorithm(const std::string& mode, int64_t c_in);

// The conv config the heuristic (or a forced override) picks.
std::string chosen_config(int64_t c_out, int64_t w_out, bool channels_last);

// Which images a CUDA device runs, e.g. "sm_90 cubin" or "sm_89 PTX"; images_for_arch answers
// for any compute capability (10 * major + minor), with no GPU.
std::string device_images(int64_t device);
std::string images_for_arch(int64_t arch);

}  // namespace fusedconv
