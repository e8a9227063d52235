#include "kernel_registry.h"
#include "format.h"
#include "fusedconv_rules.h"

#include <c10/util/Exception.h>

#include <climits>
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

// "cubins for sm_89, sm_90; PTX for sm_89", for errors.
std::string describe_build() {
  return "cubins for " + join_archs(archs_with(ImageFormat::kCubin)) + "; PTX for " +
         join_archs(archs_with(ImageFormat::kPtx));
}

ImageSet choose_image_set_uncached(int device_arch);

const char* name_of(KernelName kernel) { return kKernelNames[static_cast<int>(kernel)]; }

}  // namespace

std::string describe_image_set(const ImageSet& set) {
  return "sm_" + std::to_string(set.arch) + (set.format == ImageFormat::kPtx ? " PTX" : " cubin");
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

const KernelImage& find_image(const ImageSet& set, KernelName kernel, const char* dtype, const char* mode,
                              const std::string& config) {
  auto key = [](int arch, ImageFormat format, KernelName kernel, const char* dtype, const char* mode,
                const char* config) {
    return std::to_string(arch) + (format == ImageFormat::kPtx ? "p|" : "c|") +
           std::to_string(static_cast<int>(kernel)) + "|" + dtype + "|" + mode + "|" + config;
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
  auto it = index.find(key(set.arch, set.format, kernel, dtype, mode, config.c_str()));
  if (it != index.end()) return *it->second;
  TORCH_CHECK(false, "fusedconv: this build has no ", name_of(kernel), " kernel for dtype ", dtype, ", mode ",
              mode, ", config ", config, " on ", describe_image_set(set));
}

std::vector<std::string> config_names(const ImageSet& set, KernelName kernel, const char* dtype,
                                      const char* mode) {
  std::vector<std::string> names;
  for (size_t i = 0; i < kNumKernelImages; ++i) {
    const KernelImage& k = kKernelImages[i];
    if (k.arch == set.arch && k.format == set.format && k.kernel == kernel && !std::strcmp(k.dtype, dtype) &&
        !std::strcmp(k.mode, mode)) {
      names.emplace_back(k.config);
    }
  }
  return names;
}

bool has_config(const std::vector<KernelName>& kernels, const std::string& config) {
  for (size_t i = 0; i < kNumKernelImages; ++i) {
    for (KernelName kernel : kernels) {
      if (kKernelImages[i].kernel == kernel && config == kKernelImages[i].config) return true;
    }
  }
  return false;
}

const KernelImage* find_resident(const ImageSet& set, const char* dtype, const std::string& name,
                                 int64_t channels, int64_t positions) {
  // Runs on every call, so it walks a list of the resident images made once.
  static const std::vector<const KernelImage*> residents = [] {
    std::vector<const KernelImage*> v;
    for (size_t i = 0; i < kNumKernelImages; ++i) {
      if (kKernelImages[i].kernel == KernelName::conv_resident) v.push_back(&kKernelImages[i]);
    }
    return v;
  }();
  const KernelImage* best = nullptr;
  for (const KernelImage* image : residents) {
    const KernelImage& k = *image;
    if (k.arch != set.arch || k.format != set.format || std::strcmp(k.dtype, dtype)) continue;
    if (!name.empty()) {
      if (name == k.config) return &k;
    } else if (rules::resident_fits(k.block_c, k.block_m, channels, positions) &&
               (!best || int64_t{k.block_m} * k.block_c < int64_t{best->block_m} * best->block_c)) {
      best = &k;
    }
  }
  return best;
}

CUfunction load_function(int device, const KernelImage& image) {
  static std::mutex mutex;
  static std::map<std::pair<int, const KernelImage*>, CUfunction> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = loaded.find({device, &image});
  if (it != loaded.end()) return it->second;
  const cu::Driver& d = cu::driver();
  // A first call inside a CUDA graph capture must still load its module: module loading is not
  // stream work, but a capture in "global" mode (torch's default) forbids it on every thread
  // unless this thread relaxes its own mode for the duration.
  struct RelaxedCapture {
    const cu::Driver& d;
    CUstreamCaptureMode previous = CU_STREAM_CAPTURE_MODE_RELAXED;
    explicit RelaxedCapture(const cu::Driver& driver) : d(driver) {
      cu::check(d.ThreadExchangeStreamCaptureMode(&previous), "cuThreadExchangeStreamCaptureMode");
    }
    ~RelaxedCapture() { d.ThreadExchangeStreamCaptureMode(&previous); }
  } relaxed(d);
  CUmodule module;
  cu::check(d.ModuleLoadData(&module, image.data),
            image.format == ImageFormat::kPtx ? "cuModuleLoadData (JIT of the PTX)" : "cuModuleLoadData");
  CUfunction function;
  cu::check(d.ModuleGetFunction(&function, module, image.function), "cuModuleGetFunction");
  if (image.shared_bytes > 48 * 1024) {
    cu::check(d.FuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                 image.shared_bytes), "cuFuncSetAttribute");
  }
  loaded.emplace(std::make_pair(device, &image), function);
  return function;
}

void launch_params(CUfunction function, const KernelImage& image, int64_t grid, CUstream stream, void** params) {
  TORCH_CHECK_VALUE(grid <= INT_MAX, "fusedconv.forward: ", name_of(image.kernel), " needs ", str(grid),
                    " thread blocks, more than one launch allows; split the batch");
  cu::check(cu::driver().LaunchKernel(function, static_cast<unsigned>(grid), 1, 1, 32 * image.num_warps, 1, 1,
                                      image.shared_bytes, stream, params, nullptr),
            name_of(image.kernel));
}

}  // namespace fusedconv
