// Runs a TorchScript model that calls torch.ops.fusedconv.forward, from C++ only, and checks
// its output against a reference saved from Python.
//
//   fusedconv_example MODEL INPUT EXPECTED [--device cpu|cuda] [--lib PATH/_C.so]
//                     [--atol 1e-4] [--rtol 1e-4]
//
// MODEL is a torch.jit.save'd module; INPUT and EXPECTED are torch.save'd tensors. Prints the
// max |error| and exits 0 when allclose holds, 1 when it does not, 2 on any error.
#include <dlfcn.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/script.h>

namespace {

struct Options {
  std::string model, input, expected;
  std::string device = "cpu";
  std::string library = FUSEDCONV_DEFAULT_LIBRARY;
  double atol = 1e-4, rtol = 1e-4;
};

const char* kUsage =
    "usage: fusedconv_example MODEL INPUT EXPECTED [--device cpu|cuda] [--lib PATH] "
    "[--atol A] [--rtol R]";

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--device") o.device = value();
    else if (a == "--lib") o.library = value();
    else if (a == "--atol") o.atol = std::stod(value());
    else if (a == "--rtol") o.rtol = std::stod(value());
    else if (a.rfind("--", 0) == 0) throw std::invalid_argument("unknown option " + a);
    else positional.push_back(a);
  }
  if (positional.size() != 3) throw std::invalid_argument("expected MODEL INPUT EXPECTED");
  o.model = positional[0];
  o.input = positional[1];
  o.expected = positional[2];
  if (o.library.empty())
    throw std::invalid_argument("no op library: pass --lib or configure with -DFUSEDCONV_LIBRARY");
  return o;
}

// The library's static initializers register fusedconv::forward with the dispatcher; the
// model's code names the op, so this must happen before torch::jit::load.
void load_op_library(const std::string& path) {
  if (!dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL))
    throw std::runtime_error("cannot load the fusedconv op library: " + std::string(dlerror()));
}

torch::Tensor load_tensor(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot read " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  torch::IValue value = torch::jit::pickle_load(bytes);
  if (!value.isTensor())
    throw std::runtime_error(path + " holds no tensor (save one with torch.save)");
  return value.toTensor();
}

int run(const Options& o) {
  load_op_library(o.library);
  torch::Device device(o.device);
  if (device.is_cuda() && !at::hasCUDA())
    throw std::runtime_error("--device cuda, but this libtorch sees no CUDA device");

  torch::jit::Module model = torch::jit::load(o.model, device);
  model.eval();
  torch::Tensor x = load_tensor(o.input).to(device);
  torch::Tensor expected = load_tensor(o.expected).to(torch::kDouble);

  torch::Tensor out;
  {
    torch::InferenceMode guard;
    out = model.forward({x}).toTensor().to(torch::kCPU, torch::kDouble);
  }
  std::cout << "fusedconv_example on " << device << ": output " << out.sizes();
  // allclose broadcasts, so a wrong shape could otherwise pass.
  if (out.sizes() != expected.sizes()) {
    std::cout << ", but the reference is " << expected.sizes() << ": MISMATCH\n";
    return 1;
  }
  double max_err = (out - expected).abs().max().item<double>();
  bool ok = torch::allclose(out, expected, o.rtol, o.atol);
  std::cout << ", max |err| " << max_err << " vs the reference; allclose(atol=" << o.atol
            << ", rtol=" << o.rtol << "): " << (ok ? "OK" : "MISMATCH") << "\n";
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    options = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "fusedconv_example: " << e.what() << "\n" << kUsage << "\n";
    return 2;
  }
  try {
    return run(options);
  } catch (const c10::Error& e) {
    std::cerr << "fusedconv_example: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "fusedconv_example: " << e.what() << "\n";
  }
  return 2;
}
