#include "autotune.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>

namespace fusedconv {
namespace {

struct State {
  std::mutex mutex;
  bool enabled = false;
  std::string file;
  bool file_read = false;
  std::map<std::string, Choice> cache;

  State() {
    const char* on = std::getenv("FUSEDCONV_AUTOTUNE");
    enabled = on != nullptr && std::string(on) == "1";
    const char* f = std::getenv("FUSEDCONV_AUTOTUNE_CACHE");
    file = f ? f : "";
  }
};

State& state() {
  static State s;
  return s;
}

// Caller holds the mutex. Lines that do not parse are ignored: the file is a cache.
void read_file_once(State& s) {
  if (s.file_read || s.file.empty()) return;
  s.file_read = true;
  std::ifstream in(s.file);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key, config, algorithm;
    if (std::getline(fields, key, '\t') && std::getline(fields, config, '\t') && std::getline(fields, algorithm)) {
      if (const std::optional<Algorithm> a = parse_algorithm(algorithm)) s.cache[key] = {*a, config};
    }
  }
}

float time_once(const std::function<void(const Choice&)>& run, const Choice& c, CUstream stream) {
  const cu::Driver& d = cu::driver();
  CUevent start, end;
  cu::check(d.EventCreate(&start, CU_EVENT_DEFAULT), "cuEventCreate");
  cu::check(d.EventCreate(&end, CU_EVENT_DEFAULT), "cuEventCreate");
  float ms = std::numeric_limits<float>::infinity();
  try {
    cu::check(d.EventRecord(start, stream), "cuEventRecord");
    run(c);
    cu::check(d.EventRecord(end, stream), "cuEventRecord");
    cu::check(d.EventSynchronize(end), "cuEventSynchronize");
    cu::check(d.EventElapsedTime(&ms, start, end), "cuEventElapsedTime");
  } catch (...) {
    d.EventDestroy(start);
    d.EventDestroy(end);
    throw;
  }
  d.EventDestroy(start);
  d.EventDestroy(end);
  return ms;
}

}  // namespace

void set_autotune(bool enabled, const std::string& cache_file) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.enabled = enabled;
  if (cache_file != s.file) {
    s.file = cache_file;
    s.file_read = false;
  }
}

bool autotune_enabled() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.enabled;
}

std::optional<Choice> autotuned_choice(const std::string& key, const std::vector<Choice>& candidates,
                                       const std::function<void(const Choice&)>& run, CUstream stream) {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    read_file_once(s);
    auto it = s.cache.find(key);
    if (it != s.cache.end()) return it->second;
  }
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
  cu::check(cu::driver().StreamIsCapturing(stream, &capture), "cuStreamIsCapturing");
  if (capture != CU_STREAM_CAPTURE_STATUS_NONE) return std::nullopt;  // timing would break the capture

  // Each candidate runs once untimed (module load, PTX JIT) and once timed.
  Choice best = candidates.front();
  float best_ms = std::numeric_limits<float>::infinity();
  for (const Choice& c : candidates) {
    run(c);
    const float ms = time_once(run, c, stream);
    if (ms < best_ms) best_ms = ms, best = c;
  }
  std::lock_guard<std::mutex> lock(s.mutex);
  s.cache[key] = best;
  if (!s.file.empty()) {
    std::ofstream out(s.file, std::ios::app);
    out << key << '\t' << best.config << '\t' << algorithm_name(best.algorithm) << '\n';
  }
  return best;
}

std::string autotune_entries() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  read_file_once(s);
  std::string out;
  for (const auto& [key, c] : s.cache) out += key + '\t' + c.config + '\t' + algorithm_name(c.algorithm) + '\n';
  return out;
}

}  // namespace fusedconv
