"""`python -m fusedconv export`: fusedconv's kernels as one standalone KernelBench-style file.

The file is generated, never written by hand, from what the package ships:
  - the @triton.jit functions of triton_kernels/conv_sigmoid_groupnorm.py that the wrapper
    launches, and every jit helper they call, in source order, as their source text;
  - above each launched kernel, @triton.autotune over the block configs the AOT build ships
    (variants.KERNELS), keyed on every runtime argument, plus @triton.heuristics for the
    arguments that depend on the chosen block sizes (DERIVED); FOLLOWERS run the config of
    the kernel they follow instead;
  - dot_precision, the arch's tl.dot precision table (variants.precisions);
  - the wrapper and ModelNew of export_wrapper.py, verbatim.
Needs neither a GPU nor the op library: only the kernel source and Triton's package.
"""
import ast
import atexit
import hashlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import triton

from .triton_kernels import conv_sigmoid_groupnorm as kernels_module
from .triton_kernels import variants as V

ARCHS = (89, 90)
IMPORTS = ("import torch", "import torch.nn as nn", "import triton", "import triton.language as tl")
WRAPPER = Path(__file__).with_name("export_wrapper.py")

# Kernel arguments whose value depends on the config the autotuner is trying: heuristics
# compute them after the autotuner has added that config's constexprs, for the timing runs and
# the real one alike (the wrapper's grid lambdas use the same formulas over META).
_CONV_TILING = {"num_th": 'triton.cdiv(args["H_out"], args["BLOCK_H"])',
                "num_tw": 'triton.cdiv(args["W_out"], args["BLOCK_W"])',
                "num_c_blocks": 'triton.cdiv(args["C_out"], args["BLOCK_C"])'}
DERIVED = {
    "conv_stats_kernel": _CONV_TILING,
    "conv_cl_stats_kernel": _CONV_TILING,
    "group_norm_apply_kernel": {"num_blocks": 'triton.cdiv(args["HW_out"], args["BLOCK"])'},
    "to_channels_last_kernel": {"num_w_blocks": 'triton.cdiv(args["W"], args["BLOCK"])'},
}
# Launched kernels without an autotuner of their own: they must run the config another kernel
# chose (the normalize pass repeats the statistics pass's tiles), which the wrapper passes.
FOLLOWERS = {"conv_cl_norm_kernel": "conv_cl_stats_kernel"}
# Outputs a kernel also reads: timing runs would apply it again, so the autotuner restores
# them (group_norm_apply_kernel normalizes fp32 values in place).
RESTORE = {"group_norm_apply_kernel": ("y_ptr",)}


def _is_jit(decorator):
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(target) in ("triton.jit", "jit")


def _names(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _top_level_names(tree):
    """Names a module binds at top level other than its jit functions."""
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            out |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        elif isinstance(node, ast.ClassDef) or (isinstance(node, ast.FunctionDef)
                                                and not any(map(_is_jit, node.decorator_list))):
            out.add(node.name)
    return out


def kernel_functions(source, wanted):
    """[(name, def source, decorator sources)] of the @triton.jit functions in `wanted` and
    those they call, transitively, in source order."""
    tree = ast.parse(source)
    jit = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and any(map(_is_jit, n.decorator_list))}
    missing = set(wanted) - set(jit)
    if missing:
        raise RuntimeError(f"export: no @triton.jit function named {', '.join(sorted(missing))} in the kernel source")
    keep, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += sorted(_names(jit[name]) & set(jit))
    # The file carries functions only: a kernel that reads a module-level name (a constant,
    # an import other than triton's) would lose it.
    foreign = {}
    for name in keep:
        used = _names(jit[name]) & (_top_level_names(tree) - {"triton", "tl"})
        if used:
            foreign[name] = sorted(used)
    if foreign:
        raise RuntimeError(f"export: kernels use module-level names the file does not carry: {foreign}")
    return [(n.name, ast.get_source_segment(source, n), [ast.get_source_segment(source, d) for d in n.decorator_list])
            for n in jit.values() if n.name in keep]


def _configs_of(kernel_name):
    """The AOT build's configs for a kernel function (one table, however many image names)."""
    tables = [spec.configs for spec in V.KERNELS.values() if spec.fn.__name__ == kernel_name]
    if not tables or any(t != tables[0] for t in tables):
        raise RuntimeError(f"export: variants.KERNELS has no single config table for {kernel_name}")
    return tables[0]


def _autotune_decorators(name, arg_names, configs):
    derived = DERIVED.get(name, {})
    tuned = {k for c in configs for k in c.meta}
    key = [a for a in arg_names if not a.endswith("_ptr") and a not in derived and a not in tuned]
    lines = ["@triton.autotune(", "    configs=["]
    for c in configs:
        lines.append(f"        triton.Config({c.meta!r}, num_warps={c.num_warps}, num_stages={c.num_stages}),"
                     f"  # {c.name}")
    lines.append("    ],")
    lines.append(f"    key={key!r},")
    if name in RESTORE:
        lines.append(f"    restore_value={list(RESTORE[name])!r},")
    lines.append(")")
    if derived:
        lines.append("@triton.heuristics({")
        lines += [f'    "{arg}": lambda args: {expr},' for arg, expr in derived.items()]
        lines.append("})")
    return lines


def _dot_precision(arch):
    table = {t: V.precisions(arch, d) for t, d in (("float32", "fp32"), ("float16", "fp16"), ("bfloat16", "bf16"))}
    entries = ", ".join(f"torch.{t}: {(p['accurate'] if t == 'float32' else p['native'])!r}" for t, p in table.items())
    return f'''def dot_precision(dtype):
    """tl.dot input precision for sm_{arch}, as fusedconv's op picks it: fp32-accurate unless
    torch.set_float32_matmul_precision("high" or "medium") opts fp32 into TF32; half
    operands have one mode (their products are exact in the fp32 accumulator)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return {table["float32"]["tf32"]!r}
    table = {{{entries}}}
    if dtype not in table:
        raise TypeError(f"float32, float16 or bfloat16 expected, got {{dtype}}")
    return table[dtype]'''


def _wrapper_parts(source):
    """The export_wrapper.py functions and classes (their source), and the kernels they use."""
    tree = ast.parse(source)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return [ast.get_source_segment(source, n) for n in defs], set().union(*map(_names, defs))


def render(arch, configs=None):
    """The standalone file for `arch` (89, 90, ...) as text. `configs` maps a kernel name to
    the configs to tune over instead of the build's (fusedconv.triton_jit pins one each)."""
    configs = configs or {}
    source = Path(kernels_module.__file__).read_text()
    parts, used = _wrapper_parts(WRAPPER.read_text())
    launched = sorted(used & set(k.fn.__name__ for k in V.KERNELS.values()))
    funcs = kernel_functions(source, launched)
    digest = hashlib.sha256(source.encode() + Path(V.__file__).read_bytes()).hexdigest()[:12]
    out = [
        "# fusedconv: Conv2d -> + bias -> * scale -> sigmoid -> GroupNorm as Triton kernels in one",
        "# KernelBench-style file. Generated by `python -m fusedconv export "
        f"--arch sm_{arch}` (triton {triton.__version__})",
        f"# from triton_kernels/conv_sigmoid_groupnorm.py (sha256 {digest}) and variants.py:",
        "# do not edit, regenerate. Accurate fp32, and C_in > 8: conv_stats_kernel (conv, epilogue,",
        "# per-tile statistics, fp32 values) -> group_stats_kernel (mean, rstd per sample and group)",
        "# -> group_norm_apply_kernel (normalizes the values). fp16, bf16, TF32 with C_in <= 8:",
        "# to_channels_last_kernel and pack_weight_kernel -> conv_cl_stats_kernel -> group_stats_kernel",
        "# -> conv_cl_norm_kernel (the conv again, normalized). See docs/export.md.",
        *IMPORTS, "", "",
    ]
    for name, body, decorators in funcs:
        if name in launched and name not in FOLLOWERS:
            arg_names = getattr(kernels_module, name).arg_names
            out += _autotune_decorators(name, arg_names, configs.get(name) or _configs_of(name))
        out += [f"@{d}" for d in decorators] + [body, "", ""]
    out += [_dot_precision(arch), "", ""]
    for part in parts:
        out += [part, "", ""]
    return "\n".join(out[:-2]) + "\n"


_tmp = None


def load(arch, configs=None):
    """render(arch, configs) imported as a module (Triton reads kernel source from files, so
    it is written to a directory removed at exit)."""
    global _tmp
    if _tmp is None:
        _tmp = Path(tempfile.mkdtemp(prefix="fusedconv-export-"))
        atexit.register(shutil.rmtree, _tmp, ignore_errors=True)
    text = render(arch, configs)
    name = "fusedconv_export_" + hashlib.sha256(text.encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    path = _tmp / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def default_arch():
    """(arch, why): the local GPU's (sm_90 for anything newer, sm_89 below), else sm_89."""
    import torch
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        arch = 90 if 10 * major + minor >= 90 else 89
        return arch, f"the local GPU, {torch.cuda.get_device_name()} (sm_{major}{minor})"
    return 89, "no CUDA GPU here: the RTX 4090 target"
