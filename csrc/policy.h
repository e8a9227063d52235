// Which algorithm and block config a CUDA call runs: the test and tuning overrides, the rules
// generated from triton_kernels/rules.py, the resident fit, and when autotuning may choose.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fusedconv_kernels.h"
#include "kernel_registry.h"

namespace fusedconv {

struct Choice {
  Algorithm algorithm;
  std::string config;  // the algorithm's block config name (triton_kernels/variants.py)
};

const char* algorithm_name(Algorithm algorithm);
std::optional<Algorithm> parse_algorithm(const std::string& name);

// What the policy reads of a call.
struct PolicyInput {
  ImageSet set;
  const char* dtype;  // "fp32" | "fp16" | "bf16"
  const char* mode;   // rules::precision_mode
  int64_t n, c_in, c_out, w_out, hw_out, k_total, num_groups;
  int64_t kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, x_stride_w;  // the conv flavour rules read these
};

// Whether a block config is one of the Gluon FMA conv's (variants.FMA_CONV_CONFIGS), which
// materialize and recompute run in place of their plain-Triton conv kernels.
bool is_fma_config(const std::string& config);

// The choice for a call: a forced algorithm or config first; else resident where a group fits
// and rules::resident_by_default holds; else, where rules::fma_conv_config gives the Gluon FMA
// conv a config (unless plain Triton is forced), rules::fma_conv_algorithm with that config,
// else rules::default_algorithm with rules::conv_config. A forced FMA config where the FMA conv
// cannot run is a ValueError. A forced resident that cannot hold a group is a ValueError, not
// a silent fallback. Fills `tune_candidates` (every algorithm x config the build carries) when
// autotuning is on and nothing is forced; leaves it empty otherwise.
Choice choose(const PolicyInput& in, std::vector<Choice>* tune_candidates);

// Test and tuning hooks, process-wide: force one block config by name, a conv config or a
// resident one (which also selects the resident algorithm); force an algorithm by name. ""
// restores the default.
void set_forced_config(const std::string& config);
std::string forced_config();
void set_forced_algorithm(const std::string& algorithm);
std::string forced_algorithm();
// The documented switch to the plain-Triton twins of the Gluon kernels (materialize and
// recompute then run their plain conv kernels everywhere); starts as FUSEDCONV_PLAIN_TRITON=1.
void set_plain_triton(bool plain);
bool plain_triton();

// rules::default_algorithm and the conv config a call would take (rules::conv_config or the
// forced one), with their arguments checked: exposed to Python and the tests.
std::string default_algorithm(const std::string& mode, int64_t c_in);
std::string chosen_config(int64_t c_out, int64_t w_out, bool channels_last);

}  // namespace fusedconv
