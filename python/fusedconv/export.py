"""`python -m fusedconv export`: fusedconv's kernels as one standalone KernelBench-style file.

The file is generated, never written by hand, from what the package ships:
  - the @triton.jit functions of triton_kernels/conv_sigmoid_groupnorm.py that the wrapper
    launches, and every jit helper they call, in source order, as their source text;
  - for sm_89 (where rules.fma_conv_config can name a config), the @gluon.jit functions of
    triton_kernels/conv_fma_gluon.py that the wrapper launches and their helpers, likewise,
    except that a helper whose name the file already binds is renamed (GLUON_PREFIX): one
    module holds both sets, and a jit function finds the functions it calls by name in it;
  - above each launched kernel, @triton.autotune over the block configs the AOT build ships
    (variants.KERNELS), keyed on every runtime argument, plus @triton.heuristics for the
    arguments that depend on the chosen block sizes (DERIVED); FOLLOWERS run the config of the
    kernel they follow instead, and the TABLES' kernels one the wrapper picks (the resident
    kernel from RESIDENT_CONFIGS, the Gluon kernels the one fma_config names);
  - triton_kernels/rules.py's constants and functions (the runtime's choices), verbatim;
  - what is rendered per arch: dot_precision (the arch's tl.dot precision table,
    variants.precisions), RESIDENT_CONFIGS and fma_config (on sm_89 with FMA_CONV_CONFIGS and
    the PLAIN_TRITON switch that selects the Gluon kernels' plain-Triton twins, which
    TRITON_INTERPRET=1 selects too);
  - the wrapper and ModelNew of export_wrapper.py, verbatim.
Needs neither a GPU nor the op library: only the kernel source and Triton's package.
"""
import ast
import atexit
import functools
import hashlib
import importlib.util
import io
import shutil
import sys
import tempfile
import tokenize
from pathlib import Path

import triton

from .triton_kernels import conv_fma_gluon as gluon_module
from .triton_kernels import conv_sigmoid_groupnorm as kernels_module
from .triton_kernels import rules
from .triton_kernels import variants as V

ARCHS = (89, 90)
IMPORTS = ("import torch", "import torch.nn as nn", "import triton", "import triton.language as tl")
# A file that carries the Gluon kernels also imports Gluon, and os for PLAIN_TRITON's default.
GLUON_IMPORTS = ("import os", *IMPORTS, "from triton.experimental import gluon",
                 "from triton.experimental.gluon import language as gl")
# The kernel sources: their jit decorators, and the names their imports bind, which the file
# binds too.
TRITON_JIT = (("triton.jit", "jit"), {"triton", "tl"})
GLUON_JIT = (("gluon.jit",), {"gluon", "gl"})
# Put before a Gluon helper's name that the file already binds (conv_fma_gluon.py has its own
# _sigmoid_of_log2 and _store_tile_stats: a Gluon kernel cannot call a @triton.jit helper).
GLUON_PREFIX = "_gluon"
WRAPPER = Path(__file__).with_name("export_wrapper.py")

# Kernel arguments whose value depends on the config a kernel runs (the one the autotuner is
# trying, or for FOLLOWERS the one the wrapper passes): heuristics compute them from that
# config's constexprs, for timing runs and the real one alike (the wrapper's grid lambdas use
# the same formulas over META).
_CONV_TILING = {"num_th": 'triton.cdiv(args["H_out"], args["BLOCK_H"])',
                "num_tw": 'triton.cdiv(args["W_out"], args["BLOCK_W"])',
                "num_c_blocks": 'triton.cdiv(args["C_out"], args["BLOCK_C"])'}
# The channels-last kernels' UNIT flavour depends on the channel block count too.
_CL_TILING = dict(_CONV_TILING, UNIT="_channels_last_unit(args)")
DERIVED = {
    "conv_stats_kernel": _CONV_TILING,
    "conv_norm_kernel": _CONV_TILING,
    "conv3x3_fma_stats_kernel": _CONV_TILING,
    "conv3x3_fma_norm_kernel": _CONV_TILING,
    "conv_cl_stats_kernel": _CL_TILING,
    "conv_cl_norm_kernel": _CL_TILING,
    "group_norm_apply_kernel": {"num_blocks": 'triton.cdiv(args["HW_out"], args["BLOCK"])'},
    "to_channels_last_kernel": {"num_w_blocks": 'triton.cdiv(args["W"], args["BLOCK"])'},
}
# Launched kernels without an autotuner of their own: they must run the config another kernel
# chose (the normalize pass repeats the statistics pass's tiles), which the wrapper passes.
FOLLOWERS = {"conv_norm_kernel": "conv_stats_kernel", "conv_cl_norm_kernel": "conv_cl_stats_kernel"}
# Launched kernels whose config the wrapper picks from a table the file carries, as the op
# does: a resident program must hold a whole group, so it runs the smallest config that does;
# the Gluon FMA conv runs the config fma_conv_config names (by W_out: its last column tile is
# shifted left, so a tile wider than the image cannot run).
TABLES = {"conv_resident_kernel": "RESIDENT_CONFIGS", "conv3x3_fma_stats_kernel": "FMA_CONV_CONFIGS",
          "conv3x3_fma_norm_kernel": "FMA_CONV_CONFIGS"}
# Outputs a kernel also reads: timing runs would apply it again, so the autotuner restores
# them (group_norm_apply_kernel normalizes fp32 values in place).
RESTORE = {"group_norm_apply_kernel": ("y_ptr",)}


def _is_jit(decorator, jit=TRITON_JIT):
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(target) in jit[0]


def _names(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _top_level_names(tree, jit=TRITON_JIT):
    """Names a module binds at top level other than its jit functions."""
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            out |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        elif isinstance(node, ast.ClassDef) or (isinstance(node, ast.FunctionDef)
                                                and not any(_is_jit(d, jit) for d in node.decorator_list)):
            out.add(node.name)
    return out


def kernel_functions(source, wanted, jit=TRITON_JIT):
    """[(name, def source, decorator sources)] of the jit functions (`jit`: TRITON_JIT or
    GLUON_JIT) in `wanted` and those they call, transitively, in source order."""
    tree = ast.parse(source)
    funcs = {n.name: n for n in tree.body
             if isinstance(n, ast.FunctionDef) and any(_is_jit(d, jit) for d in n.decorator_list)}
    missing = set(wanted) - set(funcs)
    if missing:
        raise RuntimeError(f"export: no @{jit[0][0]} function named {', '.join(sorted(missing))} in the kernel source")
    keep, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += sorted(_names(funcs[name]) & set(funcs))
    # The file carries functions only: a kernel that reads a module-level name (a constant,
    # an import other than triton's) would lose it.
    foreign = {}
    for name in keep:
        used = _names(funcs[name]) & (_top_level_names(tree, jit) - jit[1])
        if used:
            foreign[name] = sorted(used)
    if foreign:
        raise RuntimeError(f"export: kernels use module-level names the file does not carry: {foreign}")
    return [(n.name, ast.get_source_segment(source, n), [ast.get_source_segment(source, d) for d in n.decorator_list])
            for n in funcs.values() if n.name in keep]


def renamed(text, names):
    """`text` (Python source) with each identifier in `names` (old -> new) replaced: name tokens
    only, so strings, comments and attributes keep their words."""
    lines = text.splitlines(keepends=True)
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    hits = [t for prev, t in zip([None] + tokens, tokens)
            if t.type == tokenize.NAME and t.string in names and not (prev and prev.string == ".")]
    for t in reversed(hits):  # right to left, so a line's earlier columns stay where they were
        row, col = t.start
        lines[row - 1] = lines[row - 1][:col] + names[t.string] + lines[row - 1][t.end[1]:]
    return "".join(lines)


def gluon_renames(gluon_names, taken):
    """{name: new name} for the Gluon functions whose names `taken` (the file's other names)
    holds: GLUON_PREFIX before them."""
    return {name: GLUON_PREFIX + (name if name.startswith("_") else "_" + name) for name in sorted(gluon_names & taken)}


def carries_gluon(arch):
    """Whether the file for `arch` carries the Gluon FMA conv kernels: where fma_conv_config can
    name a config for it (sm_89)."""
    return rules.fma_conv_config(arch, "accurate", 3, 1, 1, 1, rules.FMA_WIDE_MIN_W_OUT) != ""


def _configs_of(kernel_name):
    """The AOT build's configs for a kernel function: one table, however many image names (a
    flavour built for some of them only, as the FMA conv's aligned one, takes a part of it)."""
    tables = [spec.configs for spec in V.KERNELS.values() if spec.fn.__name__ == kernel_name]
    full = max(tables, key=len, default=())
    if not tables or any(c not in full for t in tables for c in t):
        raise RuntimeError(f"export: variants.KERNELS has no single config table for {kernel_name}")
    return full


def _config_source(c):
    # The build's register budget where a config has one (variants.Config.maxnreg), so the file
    # compiles the code the AOT build ships.
    maxnreg = f", maxnreg={c.maxnreg}" if c.maxnreg else ""
    return f"triton.Config({c.meta!r}, num_warps={c.num_warps}, num_stages={c.num_stages}{maxnreg})"


def _config_lines(configs, indent):
    return [f"{indent}{_config_source(c)},  # {c.name}" for c in configs]


def _decorators(name, arg_names, configs):
    """@triton.autotune (launched kernels that are neither FOLLOWERS nor in TABLES) and
    @triton.heuristics (DERIVED) lines of a launched kernel."""
    derived = DERIVED.get(name, {})
    lines = []
    if name not in FOLLOWERS and name not in TABLES:
        configs = configs.get(name) or _configs_of(name)
        tuned = {k for c in configs for k in c.meta}
        key = [a for a in arg_names if not a.endswith("_ptr") and a not in derived and a not in tuned]
        lines += ["@triton.autotune(", "    configs=[", *_config_lines(configs, " " * 8), "    ],", f"    key={key!r},"]
        if name in RESTORE:
            lines.append(f"    restore_value={list(RESTORE[name])!r},")
        # Late bound: the wrapper defines it (Triton's benchmarker, none under the interpreter).
        lines += ["    do_bench=lambda kernel_call, quantiles: _benchmark(kernel_call, quantiles),", ")"]
    if derived:
        lines.append("@triton.heuristics({")
        lines += [f'    "{arg}": lambda args: {expr},' for arg, expr in derived.items()]
        lines.append("})")
    return lines


def _rules_source():
    """rules.py after its docstring, verbatim, comments included. It must import nothing: the
    file imports torch and triton only."""
    source = Path(rules.__file__).read_text()
    tree = ast.parse(source)
    if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)):
        raise RuntimeError("export: triton_kernels/rules.py imports a module; the file cannot carry it")
    start = tree.body[0].end_lineno if ast.get_docstring(tree) is not None else 0
    return "\n".join(source.splitlines()[start:]).strip()


def _per_arch(arch, configs):
    """dot_precision for `arch`, RESIDENT_CONFIGS and fma_config (with FMA_CONV_CONFIGS and
    PLAIN_TRITON where the file carries the Gluon kernels; else their names, None)."""
    precisions = {d: V.precisions(arch, d) for d in V.DTYPES}
    lines = [
        "def dot_precision(dtype, mode):",
        f'    """tl.dot input precision on sm_{arch} by dtype ("fp32", "fp16", "bf16") and precision mode',
        '    (precision_mode above), as the AOT build compiles it (variants.precisions)."""',
        f"    return {precisions!r}[dtype][mode]",
        "", "",
        "# conv_resident_kernel's configs (variants.KERNELS), of which the wrapper picks one.",
        "RESIDENT_CONFIGS = [",
        *_config_lines(configs.get("conv_resident_kernel") or _configs_of("conv_resident_kernel"), " " * 4),
        "]",
        "", "",
    ]
    gluon = [k for k, t in TABLES.items() if t == "FMA_CONV_CONFIGS"]
    if not carries_gluon(arch):
        return lines + [
            "def fma_config(mode, taps, stride_h, stride_w, dil_h, w_out):",
            f'    """None: fma_conv_config names no Gluon FMA conv config for sm_{arch}, so this file carries no',
            '    Gluon kernel and the plain-Triton conv kernels always run."""',
            "    return None",
            "", "",
            "# The wrapper's names for the Gluon kernels, which fma_config never lets it launch here.",
            " = ".join([*gluon, "None"]),
        ]
    return lines + [
        "# The Gluon FMA conv kernels' configs (variants.FMA_CONV_CONFIGS) by the name fma_conv_config gives.",
        "FMA_CONV_CONFIGS = {",
        *[f'    "{c.name}": {_config_source(c)},' for c in _configs_of(gluon[0])],
        "}",
        "",
        "# PLAIN_TRITON = True runs the Gluon FMA conv kernels' plain-Triton twins instead (conv_stats_kernel",
        "# and conv_norm_kernel with TAPS = 3: the same results, slower on sm_89) and the plain default,",
        "# materialize, as fusedconv.plain_triton() does for the op; FUSEDCONV_PLAIN_TRITON=1 in the",
        "# environment when the file is imported sets it, as it does for the op.",
        'PLAIN_TRITON = os.environ.get("FUSEDCONV_PLAIN_TRITON") == "1"',
        "", "",
        "def fma_config(mode, taps, stride_h, stride_w, dil_h, w_out):",
        '    """The Gluon FMA conv\'s config (FMA_CONV_CONFIGS) for a call where fma_conv_config names one,',
        "    else None: the plain-Triton conv kernels run. None too with PLAIN_TRITON, and under",
        "    TRITON_INTERPRET=1: the interpreter cannot run Gluon kernels (their twins compute the same",
        '    results)."""',
        f"    name = fma_conv_config({arch}, mode, taps, stride_h, stride_w, dil_h, w_out)",
        "    if not name or PLAIN_TRITON or triton.knobs.runtime.interpret:",
        "        return None",
        "    return FMA_CONV_CONFIGS[name]",
    ]


def _wrapper_parts(source):
    """The export_wrapper.py functions and classes ([(name, source)]), and the names they use."""
    tree = ast.parse(source)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return [(n.name, ast.get_source_segment(source, n)) for n in defs], set().union(*map(_names, defs))


@functools.lru_cache(maxsize=None)
def _parsed(source, gluon_source, wrapper):
    """(kernel_functions of the Triton source, of the Gluon source, wrapper parts, launched
    kernel names) of a kernel source, Gluon source and wrapper text, once per text:
    ast.get_source_segment splits the whole source again at each call, which took 90% of a
    render."""
    parts, used = _wrapper_parts(wrapper)
    launched = used & set(k.fn.__name__ for k in V.KERNELS.values())
    gluon = {k.fn.__name__ for k in V.KERNELS.values() if k.gluon}
    return (kernel_functions(source, sorted(launched - gluon)),
            kernel_functions(gluon_source, sorted(launched & gluon), GLUON_JIT), parts, sorted(launched))


def render(arch, configs=None):
    """The standalone file for `arch` (89, 90, ...) as text. `configs` maps a kernel name to
    the configs to tune over (for a kernel in TABLES, to pick from) instead of the build's:
    pinned() makes a map of one each."""
    configs = configs or {}
    source = Path(kernels_module.__file__).read_text()
    gluon_source = Path(gluon_module.__file__).read_text()
    funcs, gluon_funcs, parts, launched = _parsed(source, gluon_source, WRAPPER.read_text())
    gluon = carries_gluon(arch)
    sources = [kernels_module, *([gluon_module] if gluon else []), V, rules]
    digest = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in sources)).hexdigest()[:12]
    out = [
        "# fusedconv: Conv2d -> + bias -> * scale -> sigmoid -> GroupNorm as Triton kernels in one",
        "# KernelBench-style file. Generated by `python -m fusedconv export "
        f"--arch sm_{arch}` (triton {triton.__version__})",
        f"# from triton_kernels/{', '.join(Path(m.__file__).name for m in sources[:-1])} and rules.py "
        f"(sha256 {digest}):",
        "# do not edit, regenerate. The algorithms (rules.py picks one; conv_sigmoid_group_norm takes",
        "# algorithm= to force one): materialize: conv_stats_kernel (conv, epilogue, per-tile statistics,",
        "# fp32 values) -> group_stats_kernel (mean, rstd per sample and group) -> group_norm_apply_kernel.",
        "# recompute: conv_stats_kernel -> group_stats_kernel -> conv_norm_kernel (the conv again,",
        "# normalized). channels_last: to_channels_last_kernel and pack_weight_kernel -> conv_cl_stats_kernel",
        "# -> group_stats_kernel -> conv_cl_norm_kernel. resident: conv_resident_kernel. See docs/export.md.",
    ]
    if gluon:
        out += ["# Exact fp32 on sm_89 runs the conv passes as the Gluon kernels conv3x3_fma_stats_kernel and",
                "# conv3x3_fma_norm_kernel (register-blocked FP32 FMAs) where fma_config gives a config, with",
                "# recompute the default there and materialize in L2-sized chunks of samples; PLAIN_TRITON",
                "# selects their plain-Triton twins, and under TRITON_INTERPRET=1 the twins always run."]
    out += [*(GLUON_IMPORTS if gluon else IMPORTS), "", ""]
    rules_source, per_arch = _rules_source(), _per_arch(arch, configs)
    emitted = [(name, body, decorators, kernels_module) for name, body, decorators in funcs]
    if gluon:
        taken = ({name for name, _, _ in funcs} | _top_level_names(ast.parse(rules_source))
                 | _top_level_names(ast.parse("\n".join(per_arch))) | {name for name, _ in parts})
        renames = gluon_renames({name for name, _, _ in gluon_funcs}, taken)
        if set(renames) & set(launched):
            raise RuntimeError(f"export: launched Gluon kernels share a name with the file's: {sorted(renames)}")
        emitted += [(renames.get(name, name), renamed(body, renames), decorators, gluon_module)
                    for name, body, decorators in gluon_funcs]
    for name, body, decorators, module in emitted:
        if name in launched:
            out += _decorators(name, getattr(module, name).arg_names, configs)
        out += [f"@{d}" for d in decorators] + [body, "", ""]
    out += ["# The choices fusedconv's op makes: triton_kernels/rules.py, verbatim.", rules_source, "", "",
            *per_arch, "", ""]
    for _, part in parts:
        out += [part, "", ""]
    return "\n".join(out[:-2]) + "\n"


def pinned(dtype, conv=None, group_stats=None, apply=None, copy=None, pack=None, resident=None):
    """render()'s `configs` for inputs of `dtype` ("fp32", "fp16", "bf16") with each kernel
    named pinned to the build's config of that name (a conv name pins both conv kernels): an
    autotuner with one config runs it untimed. Kernels not named keep all their configs."""
    names = {"conv_stats": conv, "conv_cl_stats": conv, "group_stats": group_stats, "group_norm_apply": apply,
             "to_channels_last": copy, "pack_weight": pack, "conv_resident": resident}
    out = {}
    for image, name in names.items():
        if name:
            spec = V.KERNELS[image]
            out[spec.fn.__name__] = [c for c in spec.configs_for(dtype) if c.name == name]
            if not out[spec.fn.__name__]:
                raise ValueError(f"export: no {image} config named {name!r} for {dtype}")
    return out


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
