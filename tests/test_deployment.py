"""Deployment: the op from a C++ program (libtorch, no Python), from TorchScript and
torch.export programs loaded in a fresh process, under torch.compile inside a larger model, and
from a wheel installed where neither Triton nor a compiler exists."""
import email
import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import fusedconv
from fusedconv._library import library_path
from helpers import REFERENCE_PATH, fresh_env, reference

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cpp"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


artifacts = _load("fusedconv_make_artifacts", EXAMPLE / "make_artifacts.py")


def base_env():
    # conftest sets TRITON_INTERPRET=1 for the kernel tests; under it @triton.jit gives
    # interpreter functions, which the wheel build's AOT compiler cannot compile.
    return fresh_env()


def run(cmd, **kwargs):
    kwargs.setdefault("env", base_env())
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)


def check(cmd, **kwargs):
    r = run(cmd, **kwargs)
    assert r.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n"
                              f"{r.stdout}\n{r.stderr}")
    return r


def python_libraries(names):
    return [n for n in names if n.startswith("libpython") or "torch_python" in n]


# --- the C++ example ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def example_binary(tmp_path_factory):
    cxx = os.environ.get("CXX") or next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)
    if not shutil.which("cmake") or not cxx:
        pytest.skip("the C++ example needs cmake and a C++ compiler; "
                    f"found cmake={shutil.which('cmake')}, compiler={cxx}")
    build = tmp_path_factory.mktemp("cpp_example")
    check(["cmake", "-S", EXAMPLE, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
           f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
           f"-DFUSEDCONV_LIBRARY={library_path()}"])
    check(["cmake", "--build", build, "-j2"])
    return build / "fusedconv_example"


@pytest.fixture(scope="module")
def example_files(tmp_path_factory):
    return artifacts.make(tmp_path_factory.mktemp("cpp_artifacts"), REFERENCE_PATH)


def run_example(binary, files, *extra, expected=None):
    # No python on PATH and no PYTHON* variables: the program must not need Python.
    env = {k: v for k, v in base_env().items() if not k.startswith("PYTHON")}
    env["PATH"] = str(binary.parent)
    expected = expected or files["expected"]
    return run([binary, files["model"], files["input"], expected, *extra], env=env)


def test_cpp_example_matches_the_reference(example_binary, example_files, device):
    r = run_example(example_binary, example_files, "--device", device)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"on {device}" in r.stdout and "OK" in r.stdout


def test_cpp_example_fails_on_a_wrong_reference(example_binary, example_files, tmp_path):
    good = torch.load(example_files["expected"])
    off_by_little = good.clone()
    off_by_little[1, 5, 3, 7] += 1e-3
    wrong_shape = good[:, :, :-1]
    for name, wrong in (("value", off_by_little), ("shape", wrong_shape)):
        path = tmp_path / f"wrong_{name}.pt"
        torch.save(wrong, path)
        r = run_example(example_binary, example_files, expected=path)
        assert r.returncode == 1 and "MISMATCH" in r.stdout, (name, r.stdout, r.stderr)


def test_cpp_example_fails_without_the_op_library(example_binary, example_files):
    # libm loads fine but registers nothing: the model must then fail to load.
    r = run_example(example_binary, example_files, "--lib", "libm.so.6")
    assert r.returncode == 2 and "fusedconv::forward" in r.stderr, r.stderr


def test_cpp_example_uses_the_shared_libstdcxx(example_binary):
    """A compiler that links libstdc++'s internals into the program (seen on the device image:
    CXX=/opt/gcc/bin/g++) made it abort in std::locale teardown inside libtorch's TorchScript
    compiler: a second copy of the locale machinery beside the shared libstdc++."""
    if not shutil.which("nm"):
        pytest.skip("nm is not installed")
    out = check(["nm", "-C", "--defined-only", example_binary]).stdout
    assert "std::locale::~locale()" not in out, "rebuild with the system compiler (CXX=g++)"


def test_cpp_example_links_no_python(example_binary):
    if not shutil.which("ldd"):
        pytest.skip("ldd is not installed")
    out = check(["ldd", example_binary]).stdout
    resolved = re.findall(r"^\s*(\S+) =>", out, re.M)
    assert "libtorch_cpu.so" in resolved and "not found" not in out, out
    assert not python_libraries(resolved), out


# --- TorchScript and torch.export, loaded in a fresh process -----------------------------

FRESH_PROCESS = """
import sys, torch
import fusedconv  # registers torch.ops.fusedconv, which the saved programs call
kind, program, inputs, outputs, device = sys.argv[1:]
if kind == "torchscript":
    model = torch.jit.load(program, map_location=device)
else:
    model = torch.export.load(program).module()
with torch.no_grad():
    torch.save([model(x.to(device)).cpu() for x in torch.load(inputs)], outputs)
"""


def outputs_in_fresh_process(kind, program, inputs, device, tmp_path):
    torch.save(inputs, tmp_path / "inputs.pt")
    check([sys.executable, "-c", FRESH_PROCESS, kind, program, tmp_path / "inputs.pt",
           tmp_path / "outputs.pt", device])
    return torch.load(tmp_path / "outputs.pt")


def test_torchscript_round_trip_in_a_fresh_process(tmp_path, device):
    torch.manual_seed(0)
    model = fusedconv.ModelNew(*reference.get_init_inputs(8, 32, 3, 8)).to(device).eval()
    scripted = torch.jit.script(artifacts.ScriptableFusedConv(model))
    assert "fusedconv::forward" in str(scripted.graph)
    scripted.save(str(tmp_path / "model.pt"))
    inputs = [torch.rand(n, 8, 20, 20) for n in (1, 3)]
    got = outputs_in_fresh_process("torchscript", tmp_path / "model.pt", inputs, device, tmp_path)
    with torch.no_grad():
        for x, out in zip(inputs, got):
            torch.testing.assert_close(out, model(x.to(device)).cpu())


class Wrapped(nn.Module):
    """The drop-in module between other layers, as a user's model would hold it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = fusedconv.ModelNew(8, 16, 3, 4, (16, 1, 1), (16, 1, 1))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = self.block(torch.relu(self.stem(x)))
        return self.head(y.mean(dim=(2, 3)))


def test_torch_export_of_a_wrapped_model_round_trips_in_a_fresh_process(tmp_path, device):
    torch.manual_seed(0)
    model = Wrapped().to(device).eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(model, (torch.rand(3, 3, 16, 16, device=device),),
                             dynamic_shapes={"x": {0: batch}})
    assert any("fusedconv.forward" in str(n.target) for n in ep.graph.nodes)
    torch.export.save(ep, tmp_path / "model.pt2")
    inputs = [torch.rand(n, 3, 16, 16) for n in (2, 5)]
    got = outputs_in_fresh_process("export", tmp_path / "model.pt2", inputs, device, tmp_path)
    with torch.no_grad():
        for x, out in zip(inputs, got):
            torch.testing.assert_close(out, model(x.to(device)).cpu())


def test_torch_compile_fullgraph_of_a_wrapped_model(device):
    if device == "cpu" and not shutil.which(os.environ.get("CXX", "g++")):
        pytest.skip("Inductor's CPU backend needs a C++ compiler")
    torch.manual_seed(0)
    model = Wrapped().to(device).eval()
    # The default backend (Inductor), which lowers the neighbours and calls the op as is;
    # fullgraph=True turns any graph break into an error.
    compiled = torch.compile(model, fullgraph=True)
    x = torch.rand(2, 3, 16, 16, device=device)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


# --- the wheel, installed where there is no Triton and no compiler ------------------------

VENV_CHECK = """
import json, shutil, sys
import torch
try:
    import triton
    sys.exit("triton is importable in the test venv")
except ImportError:
    pass
compilers = {t: shutil.which(t) for t in ("cc", "c++", "gcc", "g++", "clang", "nvcc")}
if any(compilers.values()):
    sys.exit(f"compilers on PATH: {compilers}")
import fusedconv
data = torch.load(sys.argv[1])
model = fusedconv.FusedConvSigmoidGroupNorm(*data["args"], **data["kwargs"]).eval()
model.load_state_dict(data["state_dict"])
errors = {}
for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
    with torch.no_grad():
        out = model.to(device)(data["x"].to(device)).double().cpu()
    errors[device] = (out - data["expected"]).abs().max().item()
    if not torch.allclose(out, data["expected"], atol=1e-4, rtol=1e-4):
        sys.exit(f"{device}: max |err| {errors[device]:.2e} against the reference")
report = fusedconv.build_report()
print(json.dumps(dict(file=fusedconv.__file__, errors=errors, archs=report["archs"],
                      ptx_archs=report["ptx_archs"])))
"""


def arch_names(archs):
    return ", ".join(f"sm_{a}" for a in archs) or "none"


def requested_archs():
    """The archs the build compiles, from the same variables and defaults setup.py reads."""
    saved = list(sys.path)  # aot_build puts the checkout first on sys.path
    aot_build = _load("fusedconv_aot_build", ROOT / "build_scripts" / "aot_build.py")
    sys.path[:] = saved
    env = os.environ.get
    return (aot_build._parse_archs(env("FUSEDCONV_ARCHS", aot_build.DEFAULT_ARCHS)),
            aot_build._parse_archs(env("FUSEDCONV_PTX_ARCHS", aot_build.DEFAULT_PTX_ARCHS)))


def build_wheel(out):
    check([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
           ROOT, "-w", out], cwd=ROOT)
    (wheel,) = out.glob("fusedconv-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    return wheel, names, email.message_from_bytes(meta)


def make_venv(path):
    """A venv that sees torch but not Triton, with nothing but its own bin on PATH."""
    check([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path])
    python = path / "bin" / "python"
    purelib = check([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    pth = ['import sys; sys.modules["triton"] = None']
    if sys.prefix != sys.base_prefix:
        # Run from a venv: --system-site-packages reaches the base interpreter's packages,
        # not this venv's, where torch is.
        pth += site.getsitepackages()
    (Path(purelib.stdout.strip()) / "zz_deployment_test.pth").write_text("\n".join(pth) + "\n")
    env = {k: v for k, v in os.environ.items()
           if k in ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "TMPDIR", "LANG")}
    env.update(PATH=str(path / "bin"), HOME=str(path), PYTHONNOUSERSITE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return python, env


# alone: it builds in the checkout's build/, which a second suite running at once (the device
# check runs the native and the forced-PTX suites together) would build in too.
@pytest.mark.slow
@pytest.mark.alone
def test_wheel_installs_and_runs_without_triton_or_a_compiler(tmp_path):
    """Builds the wheel from this checkout (reusing build/'s cached AOT step), checks its
    contents and metadata, installs it in a fresh venv and runs the op against the reference.

    The venv: there is no torch wheel to install offline, so it is created with
    --system-site-packages for torch, and a .pth file in the venv sets sys.modules["triton"] =
    None, which makes `import triton` raise ImportError (and importlib.util.find_spec return
    None) as if Triton were not installed. The installed wheel lands in the venv's own
    site-packages, which comes before the system's, so the system's fusedconv is shadowed.
    PATH holds only the venv's bin, so no compiler can be found. The check run in the venv
    asserts all three.
    """
    wheel, names, meta = build_wheel(tmp_path / "wheel")
    assert "fusedconv/_C.so" in names, names
    requires = meta.get_all("Requires-Dist")
    assert f"torch=={torch.__version__.split('+')[0]}" in requires, requires

    venv = tmp_path / "venv"
    python, env = make_venv(venv)
    # pip comes from the system site-packages; --force-reinstall because the system already
    # has a fusedconv of the same version (pip leaves that one alone: it is outside the venv).
    check([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall",
           wheel], env=env)

    ref, fused = artifacts.build_models(reference)
    x = torch.rand(2, artifacts.C_IN, 21, 19)
    with torch.no_grad():
        expected = ref.double()(x.double())
    torch.save(dict(args=(artifacts.C_IN, artifacts.C_OUT, artifacts.KERNEL, artifacts.GROUPS),
                    kwargs=dict(stride=artifacts.STRIDE, padding=artifacts.PADDING),
                    state_dict=fused.state_dict(), x=x, expected=expected), tmp_path / "case.pt")
    checked = check([python, "-c", VENV_CHECK, tmp_path / "case.pt"], env=env, cwd=tmp_path)
    result = json.loads(checked.stdout)

    assert Path(result["file"]).is_relative_to(venv), result["file"]
    assert set(result["errors"]) == {"cpu"} | ({"cuda"} if torch.cuda.is_available() else set())
    # What the wheel carries is what the build was asked for, and its description says so.
    archs, ptx = requested_archs()
    assert (result["archs"], result["ptx_archs"]) == (archs, ptx)
    carries = f"cubins for {arch_names(archs)}; PTX for {arch_names(ptx)}"
    assert carries in meta.get_payload() and carries in meta["Summary"], meta["Summary"]
