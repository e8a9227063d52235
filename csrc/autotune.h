// Opt-in on-device autotuning over the AOT variants: each candidate (algorithm x block
// config) is timed once per shape key; the fastest is kept in memory and, optionally, in a
// file that later processes read. Never during CUDA graph capture.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "cuda_driver.h"

namespace fusedconv {

struct Choice {
  std::string algorithm;  // "materialize", "recompute", "channels_last" or "resident"
  std::string config;     // the algorithm's block config name (variants.py)
};

bool is_algorithm(const std::string& name);

// Enabled by FUSEDCONV_AUTOTUNE=1 or set_autotune(true); the file from FUSEDCONV_AUTOTUNE_CACHE
// or set_autotune's argument ("" for memory only).
void set_autotune(bool enabled, const std::string& cache_file);
bool autotune_enabled();

// The cached choice for `key`; otherwise, unless `stream` is capturing a graph, times
// run(candidate) for every candidate on `stream` and caches the fastest. Returns false (and
// leaves *choice alone) when it neither found nor made a choice.
bool autotuned_choice(const std::string& key, const std::vector<Choice>& candidates,
                      const std::function<void(const Choice&)>& run, CUstream stream, Choice* choice);

// "key\tconfig\talgorithm" lines, for tests and `python -m fusedconv info`.
std::string autotune_entries();

}  // namespace fusedconv
