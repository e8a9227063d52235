#include "kernel_registry.h"
#include "format.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>

namespace fusedconv {
namespace {

std::set<int> archs_with(ImageFormat format) {
  std::set<int> archs;
  for (size_t i = 0; i < kNumKernelImages; ++i) {
    if (kKernelImages[i].format == format) archs.insert(kKernelImages[i].arch);
  }
  return archs;
}

std::string join_archs(const std::set<int>& archs) {
  std::string s;
  for (int a : archs) s += (s.empty() ? "sm_" : ", sm_") + std::to_string(a);
  return s.empty() ? "none" : s;
}

// FUSEDCONV_FORCE_PTX, read once: 0 when unset.
int forced_ptx_arch() {
  static const int arch = [] {
    const char* v = std::getenv("FUSEDCONV_FORCE_PTX");
    if (v == nullptr || *v == '\0') return 0;
    std::string s(v);
    if (s.rfind("sm_", 0) == 0) s = s.substr(3);
    char* end = nullptr;
    long a = std::strtol(s.c_str(), &end, 10);
    TORCH_CHECK(end != s.c_str() && *end == '\0' && a > 0,
                "fusedconv: FUSEDCONV_FORCE_PTX must name an arch such as 89 or sm_89, got '", v, "'");
    return static_cast<int>(a);
  }();
  return arch;
}

ImageSet choose_image_set_uncached(int device_arch);

}  // namespace

std::string describe_build() {
  return "cubins for " + join_archs(archs_with(ImageFormat::kCubin)) + "; PTX for " +
         join_archs(archs_with(ImageFormat::kPtx));
}

ImageSet choose_image_set(int device_arch) {
  // Called on every launch: the answer per arch never changes within a process.
  static std::mutex mutex;
  static std::map<int, ImageSet> chosen;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = chosen.find(device_arch);
    if (it != chosen.end()) return it->second;
  }
  const ImageSet set = choose_image_set_uncached(device_arch);
  std::lock_guard<std::mutex> lock(mutex);
  chosen.emplace(device_arch, set);
  return set;
}

namespace {

ImageSet choose_image_set_uncached(int device_arch) {
  const int forced = forced_ptx_arch();
  if (forced != 0) {
    TORCH_CHECK(archs_with(ImageFormat::kPtx).count(forced),
                "fusedconv: FUSEDCONV_FORCE_PTX=", str(static_cast<int64_t>(forced)), " but this build carries ", describe_build());
    TORCH_CHECK(forced <= device_arch, "fusedconv: FUSEDCONV_FORCE_PTX=", str(static_cast<int64_t>(forced)),
                " cannot run on this sm_", str(static_cast<int64_t>(device_arch)), " GPU (PTX only runs on its arch or newer)");
    return {forced, ImageFormat::kPtx};
  }
  int best_cubin = 0;
  for (int a : archs_with(ImageFormat::kCubin)) {
    if (a / 10 == device_arch / 10 && a <= device_arch) best_cubin = std::max(best_cubin, a);
  }
  if (best_cubin) return {best_cubin, ImageFormat::kCubin};
  int best_ptx = 0;
  for (int a : archs_with(ImageFormat::kPtx)) {
    if (a <= device_arch) best_ptx = std::max(best_ptx, a);
  }
  if (best_ptx) return {best_ptx, ImageFormat::kPtx};
  TORCH_CHECK(false, "fusedconv: no kernel image runs on this GPU (sm_", str(static_cast<int64_t>(device_arch)),
              "); this build carries ", describe_build(),
              ". Rebuild with FUSEDCONV_ARCHS including ", str(static_cast<int64_t>(device_arch)), ".");
}

}  // namespace

const KernelImage& find_image(const ImageSet& set, const char* kernel, const char* dtype,
                              const char* mode, const char* config) {
  auto key = [](int arch, ImageFormat format, const char* kernel, const char* dtype, const char* mode,
                const char* config) {
    return std::to_string(arch) + (format == ImageFormat::kPtx ? "p|" : "c|") + kernel + "|" + dtype +
           "|" + mode + "|" + config;
  };
  // Built once (C++ guarantees a thread-safe initialisation): launches look images up by name.
  static const std::unordered_map<std::string, const KernelImage*> index = [&] {
    std::unordered_map<std::string, const KernelImage*> m;
    for (size_t i = 0; i < kNumKernelImages; ++i) {
      const KernelImage& k = kKernelImages[i];
      m.emplace(key(k.arch, k.format, k.kernel, k.dtype, k.mode, k.config), &k);
    }
    return m;
  }();
  auto it = index.find(key(set.arch, set.format, kernel, dtype, mode, config));
  if (it != index.end()) return *it->second;
  TORCH_CHECK(false, "fusedconv: this build has no ", kernel, " kernel for dtype ", dtype, ", mode ",
              mode, ", config ", config, " on sm_", str(static_cast<int64_t>(set.arch)),
              set.format == ImageFormat::kPtx ? " (PTX)" : " (cubin)");
}

std::vector<std::string> config_names(const ImageSet& set, const char* kernel, const char* dtype,
                                      const char* mode) {
  std::vector<std::string> names;
  for (size_t i = 0; i < kNumKernelImages; ++i) {
    const KernelImage& k = kKernelImages[i];
    if (k.arch == set.arch && k.format == set.format && !std::strcmp(k.kernel, kernel) &&
        !std::strcmp(k.dtype, dtype) && !std::strcmp(k.mode, mode)) {
      names.emplace_back(k.config);
    }
  }
  return names;
}

}  // namespace fusedconv
