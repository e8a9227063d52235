"""AOT-compile every kernel variant for every arch, with no GPU, into a generated C++ source.

    python build_scripts/aot_build.py --out build/fusedconv_gen [--archs 89,90] [--ptx-archs 89]

Writes under --out:
  images/sm_<arch>/<variant>.{cubin,ptx}   the compiled images
  kernel_images.cpp                        the images (.incbin) and their metadata table
  fusedconv_kernels.h, fusedconv_rules.h   typed launchers and the rules (codegen.py)
  build_report.json                        what `python -m fusedconv info` prints
setup.py runs this from build_ext; nothing is compiled or fetched at run time. A stamp of the
inputs (kernel source, Triton version, archs) skips the work when nothing changed.
"""
import argparse
import concurrent.futures as futures
import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import codegen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KERNEL_PACKAGE = "fusedconv.triton_kernels"

DEFAULT_ARCHS = "89,90"
# Only sm_89 PTX: sm_90 Triton PTX targets sm_90a, which no other arch can JIT.
DEFAULT_PTX_ARCHS = "89"


def _parse_archs(text):
    return sorted({int(a.strip().removeprefix("sm_")) for a in text.split(",") if a.strip()})


def kernel_module(name):
    """A module of the kernel package under the one name it has everywhere,
    fusedconv.triton_kernels.<name>, imported from the source tree: the build runs before
    fusedconv is installed. Its parent is an empty stand-in (the real one loads the op library,
    which the build is making), so call this only in processes that never import fusedconv."""
    if KERNEL_PACKAGE not in sys.modules:
        if "fusedconv" not in sys.modules:
            stand_in = types.ModuleType("fusedconv")
            stand_in.__path__ = []
            sys.modules["fusedconv"] = stand_in
        spec = importlib.util.spec_from_file_location(
            KERNEL_PACKAGE, ROOT / "triton_kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "triton_kernels")])
        package = importlib.util.module_from_spec(spec)
        sys.modules[KERNEL_PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{KERNEL_PACKAGE}.{name}")


def _cuda_tool(name):
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _compile_one(arch, variant_name):
    """Runs in a worker process: one triton.compile for one (arch, variant)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    V = kernel_module("variants")
    variant = next(v for v in V.variants(arch) if v.name == variant_name)
    constexprs = variant.constexprs
    # Gluon kernels compile from their own AST source. A Hopper-only Gluon op compiled for an
    # older arch aborts the process (LLVM ERROR), taking this pool down: none of ours uses one.
    source = ASTSource
    if V.KERNELS[variant.kernel].gluon:
        from triton.experimental.gluon._runtime import GluonASTSource as source
    src = source(variant.fn, signature=V.signature(variant.fn, variant.dtype, constexprs),
                 constexprs=constexprs, attrs=variant.attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=variant.config.compile_options)
    md = compiled.metadata
    if md.global_scratch_size or md.profile_scratch_size:
        raise RuntimeError(f"{variant_name} sm_{arch} wants scratch memory "
                           f"({md.global_scratch_size}, {md.profile_scratch_size} bytes): the "
                           "launcher passes null scratch pointers")
    params = codegen.entry_param_count(compiled.asm["ptx"], md.name)
    expected = len([t for t in src.signature.values() if t != "constexpr"]) + codegen.SCRATCH_PARAMS
    if params != expected:
        raise RuntimeError(f"{variant_name} sm_{arch}: its PTX entry takes {params} parameters, the generated "
                           f"launcher passes {expected} (runtime arguments + {codegen.SCRATCH_PARAMS} scratch): "
                           "Triton's launch ABI changed, update build_scripts/codegen.py")
    return dict(cubin=compiled.asm["cubin"], ptx=compiled.asm["ptx"], function=md.name,
                shared=md.shared, num_warps=md.num_warps)


_RESOURCE_RE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _resource_usage(cubin_path):
    """Registers, stack and local (spill) bytes per thread, read off the shipped cubin."""
    out = subprocess.run([_cuda_tool("cuobjdump"), "--dump-resource-usage", str(cubin_path)],
                         check=True, capture_output=True, text=True).stdout
    m = _RESOURCE_RE.search(out)
    if not m:
        raise RuntimeError(f"cuobjdump printed no resource usage for {cubin_path}:\n{out}")
    reg, stack, _static_shared, local = map(int, m.groups())
    return dict(registers=reg, stack_bytes=stack, spill_bytes=local)


def _stamp(archs, ptx_archs):
    import triton
    h = hashlib.sha256()
    for f in sorted((ROOT / "triton_kernels").glob("*.py")) + [Path(__file__), Path(codegen.__file__)]:
        h.update(f.read_bytes())
    h.update(f"{triton.__version__}|{archs}|{ptx_archs}".encode())
    return h.hexdigest()


def _cpp_string(s):
    return json.dumps(s)  # a JSON string literal is a valid C++ narrow string literal here


def _generate_cpp(entries, report):
    lines = [
        "// Generated by build_scripts/aot_build.py: do not edit.",
        '#include "kernel_registry.h"',
        "",
    ]
    for i, e in enumerate(entries):
        path = str(Path(e["path"]).resolve())
        if '"' in path or "\\" in path:
            raise RuntimeError(f"cannot embed a path with quotes or backslashes: {path}")
        # .incbin keeps the compile fast (megabytes of images as C arrays take minutes); the
        # trailing NUL lets PTX go to cuModuleLoadData as a C string.
        lines += [
            "asm(\".section .rodata\\n.balign 16\\n"
            f".globl fc_image_{i}\\n.hidden fc_image_{i}\\nfc_image_{i}:\\n"
            f".incbin \\\"{path}\\\"\\n.byte 0\\n.previous\\n\");",
            f'extern "C" const unsigned char fc_image_{i}[];',
        ]
    lines += ["", "namespace fusedconv {", "", "const KernelImage kKernelImages[] = {"]
    for i, e in enumerate(entries):
        fmt = "ImageFormat::kCubin" if e["format"] == "cubin" else "ImageFormat::kPtx"
        lines.append(
            f'    {{KernelName::{e["kernel"]}, "{e["dtype"]}", "{e["mode"]}", "{e["config"]}", '
            f'"{e["function"]}", {e["arch"]}, {fmt}, {e["block_m"]}, {e["block_w"]}, {e["block_c"]}, '
            f'{e["num_warps"]}, {e["shared"]}, fc_image_{i}}},')
    lines += [
        "};",
        f"const size_t kNumKernelImages = {len(entries)};",
        f"const char* const kBuildReportJson = {_cpp_string(json.dumps(report, indent=1))};",
        "",
        "}  // namespace fusedconv",
        "",
    ]
    return "\n".join(lines)


def _positions_per_program(meta):
    """BLOCK_M (resident), BLOCK_H * BLOCK_W (conv tiles) or BLOCK (element-wise kernels)."""
    if "BLOCK_W" in meta:
        return meta["BLOCK_H"] * meta["BLOCK_W"]
    return meta.get("BLOCK_M", meta.get("BLOCK", 0))


def write_headers(out_dir):
    """The generated C++ headers (codegen.py); cheap, so written on every build."""
    out_dir.mkdir(parents=True, exist_ok=True)
    V = kernel_module("variants")
    for name, text in (("fusedconv_kernels.h", codegen.kernels_header(V)),
                       ("fusedconv_rules.h", codegen.rules_header(ROOT / "triton_kernels" / "rules.py"))):
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def build(out_dir, archs, ptx_archs, jobs=None, log=print):
    import triton
    import torch

    V = kernel_module("variants")
    out_dir = Path(out_dir)
    write_headers(out_dir)
    stamp = _stamp(archs, ptx_archs)
    stamp_file = out_dir / "stamp"
    cpp_file = out_dir / "kernel_images.cpp"
    if stamp_file.exists() and stamp_file.read_text() == stamp and cpp_file.exists():
        log(f"[fusedconv aot] up to date: {cpp_file}")
        return cpp_file

    missing_ptx = set(ptx_archs) - set(archs)
    if missing_ptx:
        raise SystemExit(f"--ptx-archs {sorted(missing_ptx)} not among --archs {archs}")
    jobs_list = [(arch, v) for arch in archs for v in V.variants(arch)]
    jobs = jobs or os.cpu_count() or 1
    log(f"[fusedconv aot] compiling {len(jobs_list)} variants for sm_{', sm_'.join(map(str, archs))} "
        f"with triton {triton.__version__} on {jobs} processes")
    started = time.time()
    entries = []
    with futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(_compile_one, arch, v.name): (arch, v) for arch, v in jobs_list}
        for done, fut in enumerate(futures.as_completed(pending), 1):
            arch, v = pending[fut]
            res = fut.result()
            img_dir = out_dir / "images" / f"sm_{arch}"
            img_dir.mkdir(parents=True, exist_ok=True)
            cubin_path = img_dir / f"{v.name}.cubin"
            cubin_path.write_bytes(res["cubin"])
            usage = _resource_usage(cubin_path)
            common = dict(kernel=v.kernel, dtype=v.dtype, mode=v.mode, config=v.config.name,
                          precision=v.precision, function=res["function"], arch=arch,
                          block_m=_positions_per_program(v.config.meta),
                          block_w=v.config.meta.get("BLOCK_W", _positions_per_program(v.config.meta)),
                          block_c=v.config.meta.get("BLOCK_C", 0),
                          num_warps=res["num_warps"], shared=res["shared"], **usage)
            entries.append(dict(common, format="cubin", path=str(cubin_path),
                                size=len(res["cubin"])))
            if arch in ptx_archs:
                ptx_path = img_dir / f"{v.name}.ptx"
                ptx_path.write_text(res["ptx"])
                entries.append(dict(common, format="ptx", path=str(ptx_path),
                                    size=len(res["ptx"].encode()) + 1))
            if done % 10 == 0 or done == len(jobs_list):
                log(f"[fusedconv aot] {done}/{len(jobs_list)} compiled "
                    f"({time.time() - started:.0f} s)")

    entries.sort(key=lambda e: (e["arch"], e["format"], e["kernel"], e["dtype"], e["mode"], e["config"]))
    report = dict(
        triton=triton.__version__, torch=torch.__version__, archs=archs, ptx_archs=ptx_archs,
        source_stamp=stamp[:16],
        images=[{k: e[k] for k in ("kernel", "dtype", "mode", "precision", "config", "arch",
                                   "format", "num_warps", "block_m", "block_w", "block_c", "shared",
                                   "registers", "spill_bytes", "stack_bytes", "size")}
                for e in entries])
    (out_dir / "build_report.json").write_text(json.dumps(report, indent=1))
    cpp_file.write_text(_generate_cpp(entries, report))
    stamp_file.write_text(stamp)
    worst = max(entries, key=lambda e: e["registers"])
    log(f"[fusedconv aot] {len(entries)} images in {time.time() - started:.0f} s; "
        f"most registers {worst['registers']} ({worst['kernel']} {worst['dtype']} sm_{worst['arch']}), "
        f"spilling variants: {sum(e['spill_bytes'] > 0 for e in entries)}")
    return cpp_file


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "build" / "fusedconv_gen"))
    p.add_argument("--archs", default=os.environ.get("FUSEDCONV_ARCHS", DEFAULT_ARCHS))
    p.add_argument("--ptx-archs", default=os.environ.get("FUSEDCONV_PTX_ARCHS", DEFAULT_PTX_ARCHS))
    p.add_argument("--jobs", type=int, default=None)
    a = p.parse_args(argv)
    build(a.out, _parse_archs(a.archs), _parse_archs(a.ptx_archs), a.jobs)


if __name__ == "__main__":
    main()
