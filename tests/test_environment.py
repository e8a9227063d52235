"""Environment faults: no CUDA driver at all, and a GPU whose arch the build does not carry.
Each runs in a subprocess, so a crash fails the test instead of taking pytest down."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import fresh_env

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

# Makes every dlopen of libcuda fail (through a real failing dlopen, so dlerror() is set as it
# is on a machine without the driver); everything else loads as usual.
NO_DRIVER_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
void* dlopen(const char* name, int flags) {
  static void* (*real)(const char*, int);
  if (!real) real = (void* (*)(const char*, int))dlsym(RTLD_NEXT, "dlopen");
  if (name && strstr(name, "libcuda.so")) return real("libcuda-hidden-by-fusedconv-test.so", flags);
  return real(name, flags);
}
"""

NO_DRIVER_CHECK = """
import torch, fusedconv
assert not torch.cuda.is_available()
x, w, p = torch.rand(2, 3, 10, 10), torch.randn(8, 3, 3, 3), torch.randn(8)
out = fusedconv.forward(x, w, p, p, p, p, p, 4)
z = torch.nn.functional.conv2d(x, w, p) + p.view(1, -1, 1, 1)
exp = torch.nn.functional.group_norm(torch.sigmoid(z * p.view(1, -1, 1, 1)), 4, p, p)
assert torch.allclose(out, exp, atol=1e-5), (out - exp).abs().max()
assert fusedconv.build_report()["images"]
try:
    torch.ops.fusedconv._device_images(0)
    raise SystemExit("reached a GPU without a driver")
except RuntimeError as e:
    assert "could not load the CUDA driver" in str(e), e
maps = open("/proc/self/maps").read()
assert "libcuda.so" not in maps, "libcuda is loaded"
print("NO DRIVER OK")
"""


def clean_env(**extra):
    return fresh_env("FUSEDCONV_FORCE_PTX", **extra)


def test_import_and_cpu_path_without_a_cuda_driver(tmp_path):
    """Importing fusedconv, the CPU op and the build report work with no libcuda; the first
    thing that needs a GPU raises a clear error."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("needs a C compiler for the no-driver shim")
    (tmp_path / "shim.c").write_text(NO_DRIVER_SHIM)
    shim = tmp_path / "no_driver_shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", shim, tmp_path / "shim.c", "-ldl"], check=True)
    r = subprocess.run([sys.executable, "-c", NO_DRIVER_CHECK], capture_output=True, text=True,
                       env=clean_env(LD_PRELOAD=str(shim)), cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "NO DRIVER OK" in r.stdout, r.stdout + r.stderr


def build_sm89_only(out):
    """The op library with sm_89 cubins only and no PTX, built from this checkout into `out`
    (~1-2 min on 16 cores: 44 kernel variants and the C++)."""
    env = clean_env(FUSEDCONV_ARCHS="89", FUSEDCONV_PTX_ARCHS="")
    if Path("/usr/bin/g++").exists():  # see build_scripts/device_check.sh
        env.update(CC="/usr/bin/gcc", CXX="/usr/bin/g++")
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp", str(out / "temp"),
                        "--build-lib", str(out / "lib")], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return next((out / "lib").rglob("_C*.so"))


WRONG_ARCH_CHECK = """
import json, sys, torch
torch.ops.load_library(sys.argv[1])
report = json.loads(torch.ops.fusedconv.build_report())
assert report["archs"] == [89] and report["ptx_archs"] == [], (report["archs"], report["ptx_archs"])
major, minor = torch.cuda.get_device_capability()
x, w, p = torch.rand(2, 3, 10, 10), torch.randn(8, 3, 3, 3), torch.randn(8)
cpu = torch.ops.fusedconv.forward(x, w, p, p, p, p, p, 4)  # the CPU path still works
args = [t.cuda() for t in (x, w, p, p, p, p, p)]
try:
    torch.ops.fusedconv.forward(*args, 4)
    raise SystemExit("ran on an arch the build does not carry")
except RuntimeError as e:
    msg = str(e)
    print(msg)
    for words in (f"sm_{major}{minor}", "cubins for sm_89", "PTX for none"):
        assert words in msg, (words, msg)
torch.cuda.synchronize()  # the context is still healthy
assert torch.allclose(torch.ops.fusedconv.forward(x, w, p, p, p, p, p, 4), cpu)
print("WRONG ARCH OK")
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_arch_the_build_does_not_carry(tmp_path):
    """A build carrying only sm_89 cubins (no PTX) on, e.g., Hopper: the CUDA call raises the
    error naming the device's arch and what the build carries; nothing crashes. Builds the
    library itself unless FUSEDCONV_SM89_ONLY_LIB names one already built that way."""
    major, minor = torch.cuda.get_device_capability()
    if major == 8 and minor >= 9:
        pytest.skip("sm_89 cubins run on this GPU")
    lib = os.environ.get("FUSEDCONV_SM89_ONLY_LIB")
    started = time.time()
    lib = Path(lib) if lib else build_sm89_only(tmp_path)
    built_in = time.time() - started
    r = subprocess.run([sys.executable, "-c", WRONG_ARCH_CHECK, str(lib)], capture_output=True, text=True,
                       env=clean_env(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "WRONG ARCH OK" in r.stdout, r.stdout + r.stderr
    print(f"library ready in {built_in:.0f} s; {json.dumps(r.stdout.splitlines()[0])}")
