// Opt-in on-device autotuning over the AOT variants: each candidate (algorithm x block
// config) is timed once per shape key; the fastest is kept in memory and, optionally, in a
// file that later processes read. Never during CUDA graph capture.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "cuda_driver.h"
#include "policy.h"

namespace fusedconv {

// Enabled by FUSEDCONV_AUTOTUNE=1 or set_autotune(true); the file from FUSEDCONV_AUTOTUNE_CACHE
// or set_autotune's argument ("" for memory only).
void set_autotune(bool enabled, const std::string& cache_file);
bool autotune_enabled();

// The cached choice for `key`; otherwise, unless `stream` is capturing a graph, times
// run(candidate) for every candidate on `stream` and caches the fastest. Nothing when it
// neither found nor made a choice.
std::optional<Choice> autotuned_choice(const std::string& key, const std::vector<Choice>& candidates,
                                       const std::function<void(const Choice&)>& run, CUstream stream);

// "key\tconfig\talgorithm" lines, for tests and `python -m fusedconv info`.
std::string autotune_entries();

}  // namespace fusedconv
