"""What the build carries: sm_89 and sm_90 cubins, the sm_89 PTX, every variant the kernel
table defines, no spills, shared memory within the RTX 4090's 99 KB per block, and a library
with no Python dependency."""
import os
import shutil
import subprocess

import pytest
import torch

import fusedconv
from fusedconv import _library
from fusedconv.triton_kernels import variants as V

REPORT = fusedconv.build_report()
SM89_SHARED_LIMIT = 99 * 1024


def images(**match):
    return [i for i in REPORT["images"] if all(i[k] == v for k, v in match.items())]


def test_versions_and_archs():
    assert REPORT["triton"] == "3.6.0", "ship cubins from the device machine's Triton"
    assert {89, 90} <= set(REPORT["archs"])
    assert 89 in REPORT["ptx_archs"]


@pytest.mark.skipif(bool(os.environ.get("FUSEDCONV_FORCE_PTX")), reason="FUSEDCONV_FORCE_PTX overrides the choice")
@pytest.mark.parametrize("arch,images", [
    (89, "sm_89 cubin"),   # RTX 4090
    (90, "sm_90 cubin"),   # H100/H200
    (100, "sm_89 PTX"),    # a newer GPU: the driver JIT-compiles the sm_89 PTX
    (120, "sm_89 PTX"),
])
def test_image_choice_per_arch(arch, images):
    assert torch.ops.fusedconv._images_for_arch(arch) == images


@pytest.mark.skipif(bool(os.environ.get("FUSEDCONV_FORCE_PTX")), reason="FUSEDCONV_FORCE_PTX overrides the choice")
@pytest.mark.parametrize("arch", [75, 80, 86])
def test_unsupported_gpu_error_names_both_archs(arch):
    with pytest.raises(RuntimeError, match=rf"no kernel image runs on this GPU \(sm_{arch}\); this build "
                                           r"carries cubins for sm_89, sm_90; PTX for sm_89"):
        torch.ops.fusedconv._images_for_arch(arch)


@pytest.mark.parametrize("arch,fmt", [(89, "cubin"), (90, "cubin"), (89, "ptx")])
def test_every_variant_is_built(arch, fmt):
    built = {(i["kernel"], i["dtype"], i["mode"], i["config"]) for i in images(arch=arch, format=fmt)}
    wanted = {(v.kernel, v.dtype, v.mode, v.config.name) for v in V.variants(arch)}
    assert built == wanted


def test_no_variant_spills():
    spilling = [(i["arch"], i["kernel"], i["dtype"], i["mode"], i["config"], i["spill_bytes"])
                for i in REPORT["images"] if i["spill_bytes"]]
    assert spilling == []


def test_stack_frames_are_call_frames_only():
    """ptxas may outline the IEEE division's slow path as a call with a small frame (8 bytes
    seen); an array demoted to local memory would need far more."""
    big = [(i["arch"], i["kernel"], i["config"], i["stack_bytes"]) for i in REPORT["images"]
           if i["stack_bytes"] > 32]
    assert big == []


def test_sm89_shared_memory_fits_a_4090_block():
    over = [(i["kernel"], i["config"], i["shared"]) for i in images(arch=89) if i["shared"] > SM89_SHARED_LIMIT]
    assert over == []


def test_registers_within_the_hardware_limit():
    assert all(0 < i["registers"] <= 255 for i in REPORT["images"])


def positions(meta):
    """Output positions per program: a conv tile's BLOCK_H x BLOCK_W, else BLOCK_M or BLOCK."""
    return meta["BLOCK_H"] * meta["BLOCK_W"] if "BLOCK_W" in meta else meta.get("BLOCK_M", meta.get("BLOCK"))


def test_each_kernel_has_a_smaller_fallback_config():
    """Per kernel function: 2-3 configs, one smaller. A flavour may be built at part of its
    function's table (the FMA conv's aligned flavour at its 128-column tile, whose fallback is
    the first flavour's 64-column config), never at a config outside it."""
    tables = {}
    for name, spec in V.KERNELS.items():
        table = tables.setdefault(spec.fn.__name__, [])
        table += [c for c in spec.configs if c not in table]
    for fn_name, table in tables.items():
        assert 2 <= len(table) <= 3, fn_name
        sizes = [positions(c.meta) * c.meta.get("BLOCK_C", 1) for c in table]
        assert min(sizes) < max(sizes), fn_name
    for name, spec in V.KERNELS.items():
        full = max((s.configs for s in V.KERNELS.values() if s.fn is spec.fn), key=len)
        assert all(c in full for c in spec.configs), name
        assert len(spec.configs) >= 2 or spec.fixed.get("X_ALIGNED"), name


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_op_library_has_no_python_dependency():
    out = subprocess.run(["readelf", "-d", str(_library.library_path())], check=True,
                         capture_output=True, text=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
    assert needed, out
    assert not [n for n in needed if "python" in n], needed


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_op_library_uses_the_shared_libstdcxx():
    """A compiler that links libstdc++'s internals into the library (seen on the device image:
    CXX=/opt/gcc/bin/g++) gives it a second std::locale and iostream machinery beside
    libtorch's shared libstdc++, and it crashes in the first error message that streams a
    number. Such a build must fail here, not in a user's process."""
    out = subprocess.run(["nm", "-C", "--defined-only", str(_library.library_path())], check=True,
                         capture_output=True, text=True).stdout
    private = [line for line in out.splitlines()
               if "std::locale::~locale()" in line or "std::ostream::_M_insert<long>" in line]
    assert private == [], "rebuild with the system compiler (CXX=g++): " + "; ".join(private)


def test_info_command_prints_every_image(capsys):
    from fusedconv.__main__ import main
    main(["info"])
    out = capsys.readouterr().out
    assert "sm_89" in out and "sm_90" in out and "spill_bytes" in out
    rows = [line.split() for line in out.splitlines()]
    kernel_column = [r[2] for r in rows if len(r) > 3 and r[1] in ("cubin", "ptx")]
    for name in V.KERNELS:
        assert kernel_column.count(name) == len(images(kernel=name)), name


def test_gluon_kernels_compile_for_their_archs_without_spills_or_stack():
    """The interpreter cannot run Gluon kernels, so CI checks what it can: the build compiled
    each for every arch on the CPU (in the same pool as the rest; none uses a Hopper-only op),
    with no spill, no stack frame at all and shared memory a 4090 block can hold."""
    gluon = [name for name, spec in V.KERNELS.items() if spec.gluon]
    assert gluon, "no Gluon kernel in variants.KERNELS"
    for name in gluon:
        for arch in REPORT["archs"]:
            found = images(kernel=name, arch=arch)
            assert {i["config"] for i in found} == {c.name for c in V.KERNELS[name].configs}, (name, arch)
            assert all(i["spill_bytes"] == 0 and i["stack_bytes"] == 0 for i in found), found
            assert all(i["shared"] <= SM89_SHARED_LIMIT for i in found), found
