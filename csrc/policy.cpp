#include "policy.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <mutex>

#include "autotune.h"
#include "format.h"
#include "fusedconv_rules.h"

namespace fusedconv {
namespace {

struct Overrides {
  std::string config;
  std::optional<Algorithm> algorithm;
  bool plain_triton = false;
};

Overrides initial_overrides() {
  const char* plain = std::getenv("FUSEDCONV_PLAIN_TRITON");
  Overrides o;
  o.plain_triton = plain != nullptr && std::string(plain) == "1";
  return o;
}

std::mutex g_overrides_mutex;
Overrides g_overrides = initial_overrides();

// Read together under one lock, once per call.
Overrides overrides() {
  std::lock_guard<std::mutex> lock(g_overrides_mutex);
  return g_overrides;
}

Algorithm to_algorithm(std::string_view name) {
  const std::optional<Algorithm> a = parse_algorithm(std::string(name));
  TORCH_INTERNAL_ASSERT(a, "rules.py returned an unknown algorithm ", std::string(name));
  return *a;
}

std::string algorithm_list() {
  std::string out;
  for (int i = 0; i < kNumAlgorithms; ++i) out += std::string(i ? ", '" : "'") + kAlgorithmNames[i] + "'";
  return out;
}

}  // namespace

const char* algorithm_name(Algorithm algorithm) { return kAlgorithmNames[static_cast<int>(algorithm)]; }

std::optional<Algorithm> parse_algorithm(const std::string& name) {
  for (int i = 0; i < kNumAlgorithms; ++i) {
    if (name == kAlgorithmNames[i]) return static_cast<Algorithm>(i);
  }
  return std::nullopt;
}

bool is_fma_config(const std::string& config) { return has_config({KernelName::conv3x3_fma_stats}, config); }

Choice choose(const PolicyInput& in, std::vector<Choice>* tune_candidates) {
  const int64_t channels_per_group = in.c_out / in.num_groups;
  const KernelImage* resident = find_resident(in.set, in.dtype, "", channels_per_group, in.hw_out);
  const Overrides forced = overrides();
  const bool config_is_resident =
      !forced.config.empty() && find_resident(in.set, in.dtype, forced.config, 0, 0) != nullptr;
  const int64_t taps = rules::conv_taps(in.kh, in.kw, in.pad_h, in.pad_w, in.dil_w, in.x_stride_w);
  const auto fma_rule = [&](int64_t w_out) {
    return std::string(rules::fma_conv_config(in.set.arch, in.mode, taps, in.stride_h, in.stride_w, in.dil_h, w_out));
  };
  const std::string fma = forced.plain_triton ? "" : fma_rule(in.w_out);
  const bool forced_fma = !forced.config.empty() && is_fma_config(forced.config);
  if (forced_fma) {
    TORCH_CHECK_VALUE(!fma_rule(rules::FMA_WIDE_MIN_W_OUT).empty() &&
                          find_image(in.set, KernelName::conv3x3_fma_stats, in.dtype, in.mode, forced.config).block_w <=
                              in.w_out,
                      "fusedconv.forward: config '", forced.config, "' is the Gluon FMA conv's, which runs exact fp32 "
                      "on sm_89 images for an unpadded 3 x 3 kernel at unit stride and dilation over x.stride(3) == 1 "
                      "and W_out of at least its tile's width; this call is not such a case (W_out ", str(in.w_out), ")");
  }
  // The default algorithm follows the conv that will run: the FMA conv's own, unless a plain
  // config is forced.
  const bool runs_fma = forced.config.empty() ? !fma.empty() : forced_fma;
  Choice choice{to_algorithm(runs_fma ? rules::fma_conv_algorithm() : rules::default_algorithm(in.mode, in.c_in)),
                forced.config};
  if (forced.algorithm == Algorithm::resident || (!forced.algorithm && config_is_resident)) {
    TORCH_CHECK_VALUE(config_is_resident || resident, "fusedconv.forward: the resident algorithm needs a group "
                      "that fits one of this build's resident configs (BLOCK_C channels x BLOCK_M positions, "
                      "see `python -m fusedconv info`); here a group has ", str(channels_per_group),
                      " channels x ", str(in.hw_out), " positions");
    choice = {Algorithm::resident, config_is_resident ? forced.config : resident->config};
  } else if (forced.algorithm) {
    choice.algorithm = *forced.algorithm;
  } else if (resident && !forced_fma &&
             rules::resident_by_default(in.n * in.num_groups, in.n * in.c_out * in.hw_out * in.k_total)) {
    choice = {Algorithm::resident, resident->config};
  }
  const bool nchw = choice.algorithm == Algorithm::materialize || choice.algorithm == Algorithm::recompute;
  TORCH_CHECK_VALUE(!forced_fma || nchw, "fusedconv.forward: config '", forced.config, "' is the Gluon FMA conv's, "
                    "which only materialize and recompute run, not ", algorithm_name(choice.algorithm));
  if (choice.config.empty()) {
    choice.config = nchw && !fma.empty()
                        ? fma
                        : std::string(rules::conv_config(in.c_out, in.w_out, choice.algorithm == Algorithm::channels_last));
  }
  if (autotune_enabled() && forced.config.empty() && !forced.algorithm) {
    for (const std::string& name : config_names(in.set, KernelName::conv_stats, in.dtype, in.mode)) {
      for (Algorithm a : {Algorithm::materialize, Algorithm::recompute, Algorithm::channels_last}) {
        tune_candidates->push_back({a, name});
      }
    }
    if (!fma.empty()) {
      for (const std::string& name : config_names(in.set, KernelName::conv3x3_fma_stats, in.dtype, in.mode)) {
        if (find_image(in.set, KernelName::conv3x3_fma_stats, in.dtype, in.mode, name).block_w > in.w_out) continue;
        for (Algorithm a : {Algorithm::materialize, Algorithm::recompute}) tune_candidates->push_back({a, name});
      }
    }
    if (resident) tune_candidates->push_back({Algorithm::resident, resident->config});
  }
  return choice;
}

void set_forced_config(const std::string& config) {
  TORCH_CHECK_VALUE(config.empty() || has_config({KernelName::conv_stats, KernelName::conv_resident,
                                                  KernelName::conv3x3_fma_stats}, config),
                    "fusedconv: no conv config named '", config, "' in this build");
  std::lock_guard<std::mutex> lock(g_overrides_mutex);
  g_overrides.config = config;
}

std::string forced_config() { return overrides().config; }

void set_forced_algorithm(const std::string& algorithm) {
  const std::optional<Algorithm> parsed = parse_algorithm(algorithm);
  TORCH_CHECK_VALUE(algorithm.empty() || parsed, "fusedconv: algorithm must be ", algorithm_list(),
                    " or '' (the default), got '", algorithm, "'");
  std::lock_guard<std::mutex> lock(g_overrides_mutex);
  g_overrides.algorithm = parsed;
}

std::string forced_algorithm() {
  const std::optional<Algorithm> a = overrides().algorithm;
  return a ? algorithm_name(*a) : "";
}

void set_plain_triton(bool plain) {
  std::lock_guard<std::mutex> lock(g_overrides_mutex);
  g_overrides.plain_triton = plain;
}

bool plain_triton() { return overrides().plain_triton; }

std::string default_algorithm(const std::string& mode, int64_t c_in) {
  TORCH_CHECK_VALUE(mode == "accurate" || mode == "tf32" || mode == "native",
                    "fusedconv: mode must be 'accurate', 'tf32' or 'native', got '", mode, "'");
  TORCH_CHECK_VALUE(c_in > 0, "fusedconv: c_in must be positive, got ", str(c_in));
  return std::string(rules::default_algorithm(mode, c_in));
}

std::string chosen_config(int64_t c_out, int64_t w_out, bool channels_last) {
  const std::string forced = forced_config();
  return forced.empty() ? std::string(rules::conv_config(c_out, w_out, channels_last)) : forced;
}

}  // namespace fusedconv
