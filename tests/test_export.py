"""`python -m fusedconv export`: the standalone KernelBench-style file.

Statically, by parsing it (both archs): its imports, its top-level order, no forbidden names,
autotune over the build's configs, kernels and rules that are the source's text, ModelNew's
constructor; the Gluon FMA kernels (their source text) and the PLAIN_TRITON switch in the sm_89
file only; and the op's own rule functions against rules.py. Under the Triton interpreter: the
file of each arch as written (every autotuner over several configs) on CPU tensors, the autotune
path itself (with a stand-in benchmarker), fma_config's choices and fusedconv-jit against the
reference; every config and flavour of every kernel runs through this file's wrapper in
test_kernels_interpreter.py. On CUDA, in fresh processes: allclose against the reference on the
benchmark shape (fp32 and fp16) and odd shapes in every dtype, the sm_89 file's Gluon FMA path
and its twins against float64 with the kernels that ran named by the profiler, and
`bench --peer FILE`.
"""
import ast
import importlib.util
import inspect
import itertools
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import REFERENCE_PATH, Case, expected, fresh_env, random_input, reference, reference_model, replace

triton = pytest.importorskip("triton")
from fusedconv import export  # noqa: E402
from fusedconv.triton_kernels import conv_fma_gluon as G  # noqa: E402
from fusedconv.triton_kernels import conv_sigmoid_groupnorm as K  # noqa: E402
from fusedconv.triton_kernels import rules  # noqa: E402
from fusedconv.triton_kernels import variants as V  # noqa: E402

ARCHS = [89, 90]
ALLOWED_IMPORTS = {"import torch", "import torch.nn as nn", "from torch import nn", "import triton",
                   "import triton.language as tl"}
# The sm_89 file's own: Gluon, and os for PLAIN_TRITON's default.
GLUON_IMPORTS = {"import os", "from triton.experimental import gluon",
                 "from triton.experimental.gluon import language as gl"}
# The Gluon FMA conv kernels the wrapper launches (the TABLES' FMA_CONV_CONFIGS kernels).
GLUON_KERNELS = {k for k, table in export.TABLES.items() if table == "FMA_CONV_CONFIGS"}
FORBIDDEN_TL = {"sigmoid", "tanh", "gelu", "silu", "softmax", "mish"}
# The autotuned kernels, and which of them each tiled algorithm runs (the normalize passes
# follow their conv's choice: export.FOLLOWERS; the resident kernel runs a config the wrapper
# picks from RESIDENT_CONFIGS: export.TABLES).
AUTOTUNED = {"conv_stats_kernel": V.CONV_CONFIGS, "group_stats_kernel": V.GROUP_STATS_CONFIGS,
             "group_norm_apply_kernel": V.APPLY_CONFIGS, "to_channels_last_kernel": V.TRANSPOSE_CONFIGS,
             "pack_weight_kernel": V.PACK_CONFIGS, "conv_cl_stats_kernel": V.CL_CONV_CONFIGS}
SEQUENCES = {"materialize": ("conv_stats_kernel", "group_stats_kernel", "group_norm_apply_kernel"),
             "channels_last": ("to_channels_last_kernel", "pack_weight_kernel", "conv_cl_stats_kernel",
                               "group_stats_kernel")}
# The tiled algorithm each dtype takes by default over at most 8 input channels (fp32 accurate).
TILED = {torch.float32: "materialize", torch.float16: "channels_last", torch.bfloat16: "channels_last"}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    out = {}
    for arch in ARCHS:
        out[arch] = d / f"fusedconv_sm{arch}.py"
        out[arch].write_text(export.render(arch))
    return out


def tree_of(files, arch):
    return ast.parse(files[arch].read_text())


def decorators(node):
    return [ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]


def jit_kind(node):
    """"triton" or "gluon" for a top-level jit function, else None."""
    names = decorators(node) if isinstance(node, ast.FunctionDef) else []
    return "triton" if "triton.jit" in names else "gluon" if "gluon.jit" in names else None


def launched(tree):
    """The file's kernels that its wrapper functions name (they launch them, directly or
    through a local name)."""
    kernels = {n.name for n in tree.body if jit_kind(n)}
    wrapper = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not jit_kind(n)]
    return {n.id for w in wrapper for n in ast.walk(w) if isinstance(n, ast.Name)} & kernels


def import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- static checks ---------------------------------------------------------------------------

def defined(node):
    """The names a top-level statement binds."""
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return {node.name}
    return {t.id for t in ast.walk(node) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}


RULES = ast.parse(inspect.getsource(rules))
RULE_NAMES = set().union(*map(defined, RULES.body[1:]))
# What is rendered per arch; the sm_90 file binds the Gluon kernels' names (to None) there.
PER_ARCH = {"dot_precision", "fma_config", "PLAIN_TRITON", *export.TABLES.values(), *GLUON_KERNELS}


@pytest.mark.parametrize("arch", ARCHS)
def test_top_level_is_imports_kernels_rules_per_arch_wrappers_modelnew(files, arch):
    tree = tree_of(files, arch)
    kinds = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            kinds.append("import")
            assert ast.unparse(node) in ALLOWED_IMPORTS | (GLUON_IMPORTS if arch == 89 else set()), ast.unparse(node)
        elif jit_kind(node):
            kinds.append("kernel")
        elif defined(node) and defined(node) <= RULE_NAMES:
            kinds.append("rules")
        elif defined(node) and defined(node) <= PER_ARCH:
            kinds.append("per-arch")
        elif isinstance(node, ast.FunctionDef):
            kinds.append("wrapper")
        elif isinstance(node, ast.ClassDef) and node.name == "ModelNew":
            kinds.append("model")
        else:  # no docstring, other constant, test, `if __name__`, get_inputs...
            pytest.fail(f"unexpected top-level statement: {ast.unparse(node)[:80]}")
    order = [k for k, _ in itertools.groupby(kinds)]
    assert order == ["import", "kernel", "rules", "per-arch", "wrapper", "model"], order
    imports = {ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert {"import torch", "import triton", "import triton.language as tl"} <= imports
    assert (GLUON_IMPORTS <= imports) == (arch == 89) and (GLUON_IMPORTS & imports == set()) == (arch != 89)
    assert imports & {"import torch.nn as nn", "from torch import nn"}
    defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert len(defs) == len(set(defs)), "a name defined twice: the later one would shadow the first for every caller"
    names = set(defs)
    assert not names & {"get_inputs", "get_init_inputs", "Model"}
    assert not any(n.startswith("test") for n in names)


@pytest.mark.parametrize("arch", ARCHS)
def test_no_forbidden_functions_and_no_fusedconv(files, arch):
    tree = tree_of(files, arch)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_TL:
            assert ast.unparse(node.value) not in ("tl", "triton.language"), ast.unparse(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any("fusedconv" in m for m in mods)
        if isinstance(node, ast.Name):  # nor a back door to import anything else
            assert node.id not in ("__import__", "importlib", "exec", "eval"), node.id
    assert "import fusedconv" not in files[arch].read_text()


@pytest.mark.parametrize("arch", ARCHS)
def test_autotune_over_the_builds_configs_on_each_launched_kernel(files, arch):
    tree = tree_of(files, arch)
    kernels = {n.name: n for n in tree.body if jit_kind(n) == "triton"}
    gluon = set(GLUON_KERNELS) if arch == 89 else set()
    assert launched(tree) == set(AUTOTUNED) | set(export.FOLLOWERS) | set(export.TABLES) - GLUON_KERNELS | gluon
    for node in tree.body:  # the Gluon kernels run fma_config's config: tile counts from it, no autotuner
        if jit_kind(node) == "gluon":
            heuristics = ["triton.heuristics"] if node.name in GLUON_KERNELS else []
            assert decorators(node) == heuristics + ["gluon.jit"], node.name
    for name, node in kernels.items():
        autotune = [d for d in node.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func) == "triton.autotune"]
        if name not in AUTOTUNED:
            heuristics = ["triton.heuristics"] if name in export.DERIVED else []
            assert decorators(node) == heuristics + ["triton.jit"], f"{name}: a helper, follower or table's kernel"
            continue
        assert len(autotune) == 1 and decorators(node)[0] == "triton.autotune" and decorators(node)[-1] == "triton.jit"
        kw = {k.arg: k.value for k in autotune[0].keywords}
        got = []
        for c in kw["configs"].elts:
            assert ast.unparse(c.func) == "triton.Config"
            got.append((ast.literal_eval(c.args[0]), *(ast.literal_eval(k.value) for k in c.keywords)))
        assert got == [(c.meta, c.num_warps, c.num_stages) for c in AUTOTUNED[name]]
        assert 2 <= len(got) <= 3
        # The key holds every shape argument the kernel gets, so a new shape is tuned again.
        key = ast.literal_eval(kw["key"])
        arg_names = set(getattr(K, name).arg_names)
        shapes = arg_names & {"C_in", "C_out", "H", "W", "H_out", "W_out", "HW_out", "KH", "KW", "KT", "TP"}
        assert shapes and shapes - set(export.DERIVED.get(name, ())) <= set(key) <= arg_names
    module = import_file(files[arch], f"exported_tables_sm{arch}")
    assert [(c.kwargs, c.num_warps, c.num_stages) for c in module.RESIDENT_CONFIGS] == \
        [(c.meta, c.num_warps, c.num_stages) for c in V.RESIDENT_CONFIGS]


@pytest.mark.parametrize("arch", ARCHS)
def test_rules_are_rules_py_verbatim(files, arch):
    """The file carries triton_kernels/rules.py's constants and functions as their source
    text, in order, and the wrapper defines none of its own under their names."""
    text = files[arch].read_text()
    tree = ast.parse(text)
    source = inspect.getsource(rules)
    carried = [n for n in tree.body if defined(n) & RULE_NAMES]
    assert [ast.dump(n) for n in carried] == [ast.dump(n) for n in RULES.body[1:]]
    assert [ast.get_source_segment(text, n) for n in carried] == \
        [ast.get_source_segment(source, n) for n in RULES.body[1:]]


@pytest.mark.parametrize("arch", ARCHS)
def test_kernels_are_the_source_text(files, arch):
    """Generated from triton_kernels/, not copied: every function body is the source's, and
    every jit function the launched ones call is there."""
    source = inspect.getsource(K)
    text = files[arch].read_text()
    tree = ast.parse(text)
    src_tree = ast.parse(source)
    src = {n.name: ast.get_source_segment(source, n) for n in src_tree.body if isinstance(n, ast.FunctionDef)}
    emitted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and "triton.jit" in decorators(n)]
    for node in emitted:
        assert ast.get_source_segment(text, node) == src[node.name]
    names = [n.name for n in emitted]
    assert names == [n for n in src if n in names], "source order"
    called = set().union(*({c.func.id for c in ast.walk(n) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
                           for n in emitted))
    assert called & set(src) <= set(names)


@pytest.mark.parametrize("arch", ARCHS)
def test_gluon_kernels_are_the_source_text_on_sm89_only(files, arch):
    """The sm_89 file carries the @gluon.jit functions of conv_fma_gluon.py that its wrapper
    launches and every one they call, as the source's text, in source order, except that a
    helper whose name the file binds otherwise is renamed, with its calls; so no Gluon function
    calls a @triton.jit one. The sm_90 file carries none and binds the kernels' names to None."""
    text = files[arch].read_text()
    tree = tree_of(files, arch)
    emitted = [n for n in tree.body if jit_kind(n) == "gluon"]
    if arch != 89:
        assert not emitted and "@gluon.jit" not in text
        stubs = [n for n in tree.body if defined(n) & GLUON_KERNELS]
        assert len(stubs) == 1 and defined(stubs[0]) == GLUON_KERNELS and ast.unparse(stubs[0].value) == "None"
        return
    source = inspect.getsource(G)
    src = {n.name: ast.get_source_segment(source, n) for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    others = set().union(*(defined(n) for n in tree.body if jit_kind(n) != "gluon"))
    renames = export.gluon_renames(set(src), others)
    original = {renames.get(name, name): name for name in src}
    for node in emitted:
        assert ast.get_source_segment(text, node) == export.renamed(src[original[node.name]], renames)
    names = [original[n.name] for n in emitted]
    assert names == [n for n in src if n in names], "source order"
    assert GLUON_KERNELS <= set(names)
    called = set().union(*({c.func.id for c in ast.walk(n) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
                           for n in emitted))
    assert not called & {n.name for n in tree.body if jit_kind(n) == "triton"}
    assert {original.get(c, c) for c in called} & set(src) <= set(names)


def test_renamed_replaces_names_only():
    text = 'def f(a):\n    """g"""\n    return g(a) + x.g + f"g"  # g\n'
    assert export.renamed(text, {"g": "_h", "f": "k"}) == 'def k(a):\n    """g"""\n    return _h(a) + x.g + f"g"  # g\n'
    assert export.gluon_renames({"_a", "b", "c"}, {"_a", "b", "d"}) == {"_a": "_gluon_a", "b": "_gluon_b"}


@pytest.mark.parametrize("arch", ARCHS)
def test_modelnew_has_the_reference_constructor_and_state_dict(files, arch):
    module = import_file(files[arch], f"exported_static_sm{arch}")
    assert inspect.signature(module.ModelNew.__init__) == inspect.signature(reference.Model.__init__)
    init = reference.get_init_inputs()
    ref = reference.Model(*init)
    model = module.ModelNew(*init)
    assert list(model.state_dict()) == list(ref.state_dict())
    model.load_state_dict(ref.state_dict())


@pytest.mark.parametrize("arch", ARCHS)
def test_precision_is_the_arch_table(files, arch, fp32_matmul_precision):
    module = import_file(files[arch], f"exported_precision_sm{arch}")
    for dtype in V.DTYPES:
        for mode, precision in V.precisions(arch, dtype).items():
            assert module.dot_precision(dtype, mode) == precision
    for matmul, mode in (("highest", "accurate"), ("high", "tf32"), ("medium", "tf32")):
        fp32_matmul_precision(matmul)
        assert module._precision(torch.float32) == ("fp32", mode)
        assert module._precision(torch.bfloat16) == ("bf16", "native")
    with pytest.raises(TypeError, match="float64"):
        module.conv_sigmoid_group_norm(torch.zeros(1, 1, 3, 3, dtype=torch.float64), torch.zeros(1, 1, 1, 1),
                                       None, torch.zeros(1), torch.zeros(1), None, None, 1)


def test_pyflakes_finds_nothing(files):
    api = pytest.importorskip("pyflakes.api")
    reporter = pytest.importorskip("pyflakes.reporter")
    import io
    for arch, path in files.items():
        out = io.StringIO()
        assert api.check(path.read_text(), str(path), reporter.Reporter(out, out)) == 0, out.getvalue()


def test_generator_follows_calls_and_ignores_other_kernels():
    source = inspect.getsource(K) + textwrap.dedent('''

        @triton.jit
        def _unused_helper(a):
            return a


        @triton.jit
        def another_kernel(p):
            tl.store(p, _unused_helper(1.0))
        ''')
    got = [name for name, _, _ in export.kernel_functions(source, ["group_stats_kernel"])]
    assert got == ["_tile_count", "group_stats_kernel"]
    got = [name for name, _, _ in export.kernel_functions(source, ["conv_stats_kernel"])]
    assert got == ["_sigmoid_of_log2", "_tf32_split", "_tile_coords", "_tile_positions", "_channel_params",
                   "_conv_k_step", "_dot_step", "_tap_column", "_tap_pair", "_tap_quad", "_tap_octet",
                   "_conv_taps_k_step", "_conv_bias_scale_sigmoid_tile", "_out_offsets", "_store_tile_stats",
                   "conv_stats_kernel"]
    with pytest.raises(RuntimeError, match="module-level names"):
        export.kernel_functions(source + "\nLIMIT = 3\n\n@triton.jit\ndef k(p):\n    tl.store(p, LIMIT)\n", ["k"])


def test_cli_writes_the_file_and_names_the_arch(tmp_path):
    env = fresh_env()
    r = subprocess.run([sys.executable, "-m", "fusedconv", "export", "--arch", "sm_90"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == export.render(90) and "sm_90" in r.stderr
    out = tmp_path / "model_new.py"
    r = subprocess.run([sys.executable, "-m", "fusedconv", "export", "-o", str(out)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    arch = export.default_arch()[0]
    assert out.read_text() == export.render(arch) and f"sm_{arch}" in r.stderr and str(out) in r.stderr
    if not torch.cuda.is_available():
        assert arch == 89 and "no CUDA GPU" in r.stderr


# --- under the Triton interpreter ------------------------------------------------------------

CASES = [
    Case(n=2, c_in=3, c_out=20, h=19, w=21, kernel=(3, 2), groups=4, stride=(1, 2), padding=(1, 0), dilation=(1, 2)),
    Case(n=1, c_in=8, c_out=32, h=13, w=11, groups=8),
]
# 16 channels a group: no resident config holds one, so the default is a tiled algorithm.
WIDE = Case(n=1, c_in=3, c_out=16, h=7, w=9, groups=1)


def run_model(module, case, dtype=torch.float32, algorithm=None):
    """The file's wrapper (`algorithm`: None for its own choice) with a ModelNew's parameters
    loaded from the reference's state_dict, against the reference."""
    ref = reference_model(case)
    model = module.ModelNew(*reference.get_init_inputs(case.c_in, case.c_out, case.kernel, case.groups))
    model.load_state_dict(ref.state_dict())
    model = model.to(dtype)
    x = random_input(case).to(dtype)
    c, gn = model.conv, model.group_norm
    with torch.no_grad():
        out = module.conv_sigmoid_group_norm(x, c.weight, c.bias, model.bias, model.scale, gn.weight, gn.bias,
                                             gn.num_groups, gn.eps, case.stride, case.padding, case.dilation,
                                             algorithm=algorithm)
    assert_close_to_reference(out, expected(case, x, ref, dtype), dtype)


def assert_close_to_reference(out, exp, dtype):
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert out.dtype == dtype and out.shape == exp.shape
    torch.testing.assert_close(out.double(), exp, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_the_file_as_written_runs_under_the_interpreter(files, interpreter, arch, dtype):
    """Unpinned, every autotuner over several configs: the interpreter has no benchmarker, so
    nothing is timed and each kernel runs its first config. ModelNew's default (resident on a
    small problem) and each tiled algorithm match the reference. The sm_89 file imports Gluon
    and defines its kernels, and runs their plain-Triton twins here."""
    module = import_file(files[arch], f"exported_as_written_sm{arch}_{str(dtype)[6:]}")
    case = Case(n=1, c_in=3, c_out=8, h=9, w=11, groups=2)
    ref = reference_model(case)
    model = module.ModelNew(*reference.get_init_inputs(case.c_in, case.c_out, case.kernel, case.groups))
    model.load_state_dict(ref.state_dict())
    x = random_input(case).to(dtype)
    with torch.no_grad():
        assert_close_to_reference(model.to(dtype)(x), expected(case, x, ref, dtype), dtype)
    for algorithm in ("materialize", "recompute", "channels_last"):
        run_model(module, case, dtype, algorithm)
    for name in AUTOTUNED:
        tuner = getattr(module, name)
        assert len(tuner.configs) > 1 and tuner.best_config == tuner.configs[0], name


# fma_config's arguments (mode, taps, stride_h, stride_w, dil_h, w_out) on both sides of each rule.
FMA_CALLS = [(mode, taps, sh, sw, dh, w_out) for mode in rules.MODES for taps in (0, 3)
             for sh, sw, dh in ((1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)) for w_out in (63, 64, 127, 128, 300)]


@pytest.mark.parametrize("arch", ARCHS)
def test_fma_config_follows_the_rules_the_switch_and_the_interpreter(files, interpreter, monkeypatch, arch):
    """fma_config gives FMA_CONV_CONFIGS[fma_conv_config(arch, ...)] (variants.FMA_CONV_CONFIGS)
    on sm_89 and nothing on sm_90; nothing with PLAIN_TRITON, which FUSEDCONV_PLAIN_TRITON=1 at
    import sets, and nothing under TRITON_INTERPRET=1."""
    module = import_file(files[arch], f"exported_fma_config_sm{arch}")
    assert all(module.fma_config(*call) is None for call in FMA_CALLS)  # the interpreter cannot run Gluon
    if arch == 89:
        for env, plain in (("1", True), ("0", False), ("", False)):
            monkeypatch.setenv("FUSEDCONV_PLAIN_TRITON", env)
            assert import_file(files[arch], f"exported_fma_plain_{env}").PLAIN_TRITON is plain
        assert {name: (c.kwargs, c.num_warps, c.num_stages, c.maxnreg) for name, c in module.FMA_CONV_CONFIGS.items()} \
            == {c.name: (c.meta, c.num_warps, c.num_stages, c.maxnreg or None) for c in V.FMA_CONV_CONFIGS}
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False  # as on a GPU
        for call in FMA_CALLS:
            name = rules.fma_conv_config(arch, *call)
            assert module.fma_config(*call) is (module.FMA_CONV_CONFIGS[name] if name else None), call
        assert any(module.fma_config(*call) for call in FMA_CALLS) == (arch == 89)
        if arch == 89:
            monkeypatch.setattr(module, "PLAIN_TRITON", True)
            assert all(module.fma_config(*call) is None for call in FMA_CALLS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("winner", [0, 1, 2])
def test_autotune_path_under_the_interpreter(files, interpreter, dtype, winner):
    """The real autotune path with a stand-in benchmarker that runs each candidate twice and
    declares `winner` fastest: timing runs must leave no trace (the fp32 normalization runs in
    place), and the statistics (and, in the channels-last sequence, the normalize pass) must
    follow the tile of the config that won. The conv kernels' candidates get tiles of 2 x 16,
    4 x 16 and 1 x 64 so the tile count depends on the choice."""
    module = import_file(files[90], f"exported_tuned_{winner}_{str(dtype)[6:]}")
    for conv in (module.conv_stats_kernel, module.conv_cl_stats_kernel):
        conv.configs = [triton.Config(dict(BLOCK_H=h, BLOCK_W=w, BLOCK_C=c, BLOCK_K=16, K_STEPS=k),
                                      num_warps=4, num_stages=1)
                        for h, w, c, k in ((2, 16, 16, 0), (4, 16, 32, 1), (1, 64, 64, 2))]
    for name in AUTOTUNED:
        tuner = getattr(module, name)
        order = iter(range(len(tuner.configs)))

        def bench(kernel_call, quantiles, order=order, n=len(tuner.configs)):
            i = next(order)
            kernel_call()
            kernel_call()
            return [0.0 if i == winner % n else 1.0] * len(quantiles)
        tuner.do_bench = bench
    run_model(module, CASES[1], dtype, TILED[dtype])
    for name in SEQUENCES[TILED[dtype]]:
        tuner = getattr(module, name)
        assert tuner.best_config == tuner.configs[winner % len(tuner.configs)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", [CASES[0], WIDE], ids=str)
def test_triton_jit_runs_the_exported_wrapper_under_the_interpreter(monkeypatch, interpreter, case, dtype):
    """fusedconv.triton_jit (the benchmark's fusedconv-jit peer) runs the exported file with
    the C++ runtime's configs pinned: resident on a small problem, the dtype's tiled sequence
    where no resident config holds a group; the interpreter stands in for an sm_90 GPU."""
    from fusedconv import triton_jit
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    ref = reference_model(case)
    x = random_input(case).to(dtype)
    c, gn = ref.conv, ref.group_norm
    params = [t.detach().to(dtype) for t in (c.weight, c.bias, ref.bias, ref.scale, gn.weight, gn.bias)]
    with torch.no_grad():
        out = triton_jit.forward(x, *params, case.groups, gn.eps, case.stride, case.padding, case.dilation)
    assert_close_to_reference(out, expected(case, x, ref, dtype), dtype)


def test_the_ops_rule_functions_are_rules_py():
    """The op keeps two schema functions for its rules (`_default_algorithm`, `_conv_config`),
    generated from rules.py: they agree with it over every mode, both sides of each threshold."""
    rule = torch.ops.fusedconv._default_algorithm
    for mode in rules.MODES:
        for c_in in range(1, 21):
            assert rule(mode, c_in) == rules.default_algorithm(mode, c_in), (mode, c_in)
    for c_out in (1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 128):
        for w_out in (1, 95, 96, 97, 191, 192, 193, 256):
            for channels_last in (False, True):
                assert torch.ops.fusedconv._conv_config(c_out, w_out, channels_last) == \
                    rules.conv_config(c_out, w_out, channels_last), (c_out, w_out, channels_last)
    with pytest.raises(ValueError, match="mode must be"):
        rule("fp16", 8)
    with pytest.raises(ValueError, match="c_in must be positive"):
        rule("native", 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_more_than_8_input_channels_run_materialize_under_the_interpreter(files, interpreter, dtype):
    """16-bit inputs with two chunks of input channels take the materialize sequence (fp32
    values through group_norm_apply_kernel), not channels_last, and match the reference."""
    module = import_file(files[90], f"exported_wide_{str(dtype)[6:]}")
    for name in AUTOTUNED:
        tuner = getattr(module, name)
        tuner.configs = tuner.configs[-1:]  # the small fallbacks, run untimed
    run_model(module, replace(WIDE, c_in=9, padding=(1, 1)), dtype)
    ran = {name for name in AUTOTUNED if hasattr(getattr(module, name), "best_config")}
    assert ran == set(SEQUENCES["materialize"]), ran


# --- CUDA, in fresh processes (conftest's TRITON_INTERPRET stays out of them) -----------------

# Both GPU scripts' start: the exported file as `mod`, the reference as `ref_mod`, no TF32 in cuDNN.
LOAD = '''
    import importlib.util, json, sys
    import torch
    spec = importlib.util.spec_from_file_location("model_new", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    spec = importlib.util.spec_from_file_location("reference", sys.argv[2])
    ref_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref_mod)
    torch.backends.cudnn.allow_tf32 = False


    def models(c_in, c_out, k, g):
        """(reference, ModelNew) on the GPU with the same random parameters, GroupNorm's too."""
        torch.manual_seed(0)
        init = ref_mod.get_init_inputs(c_in, c_out, k, g)
        ref = ref_mod.Model(*init).cuda()
        with torch.no_grad():
            ref.group_norm.weight.normal_()
            ref.group_norm.bias.normal_()
        model = mod.ModelNew(*init)
        model.load_state_dict(ref.state_dict())
        return ref, model.cuda()
'''

CHECK = textwrap.dedent(LOAD + '''
    import fusedconv.triton_jit as jit
    results = []
    for n, c_in, c_out, h, w, k, g, dtype in json.loads(sys.argv[3]):
        dtype = getattr(torch, dtype)
        ref, model = models(c_in, c_out, k, g)
        model = model.to(dtype)
        x = torch.rand(n, c_in, h, w, device="cuda")
        with torch.no_grad():
            expect = ref(x)
            out = model(x.to(dtype)).float()
            again = model(x.to(dtype)).float()  # tuned by now: the cached configs' run
            c, gn = ref.conv, ref.group_norm
            jit_out = jit.forward(x.to(dtype), c.weight.to(dtype), c.bias.to(dtype), ref.bias.to(dtype),
                                  ref.scale.to(dtype), gn.weight.to(dtype), gn.bias.to(dtype), g).float()
        tol = 1e-4 if dtype == torch.float32 else 1e-2
        results.append(dict(shape=[n, c_in, c_out, h, w, k, g], dtype=str(dtype),
                            err=(out - expect).abs().max().item(),
                            ok=all(torch.allclose(o, expect, atol=tol, rtol=tol) for o in (out, again, jit_out)),
                            configs={k: str(getattr(mod, k).best_config) for k in
                                     ("conv_stats_kernel", "group_stats_kernel", "group_norm_apply_kernel",
                                      "to_channels_last_kernel", "pack_weight_kernel", "conv_cl_stats_kernel")
                                     if hasattr(getattr(mod, k), "best_config")}))
        print(results[-1], flush=True)
    print("RESULTS " + json.dumps(results))
''')

CUDA_SHAPES = [
    (128, 8, 32, 256, 256, 3, 8, "float32"),  # the benchmark
    (128, 8, 32, 256, 256, 3, 8, "float16"),  # the benchmark on the channels-last sequence
    (4, 8, 32, 64, 64, 3, 8, "float32"),
    (3, 8, 32, 37, 53, 3, 8, "float32"),      # odd sizes: ragged tiles
    (3, 8, 32, 37, 53, 3, 8, "float16"),
    (3, 8, 32, 37, 53, 3, 8, "bfloat16"),
]


@cuda
@pytest.mark.parametrize("arch", ARCHS)
def test_exported_file_matches_the_reference_on_cuda(tmp_path, arch):
    """Both archs' files run on any recent GPU: they differ in the fp32 tl.dot precision (sm_89's
    exact FMA path is what an RTX 4090 runs) and in the sm_89 file's Gluon FMA conv, which Triton
    compiles for the GPU at hand (test_sm89_file_runs_the_gluon_fma_conv_on_cuda)."""
    path = tmp_path / "fusedconv_model_new.py"
    path.write_text(export.render(arch))
    r = subprocess.run([sys.executable, "-c", CHECK, str(path), str(REFERENCE_PATH), json.dumps(CUDA_SHAPES)],
                       capture_output=True, text=True, timeout=900, env=fresh_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads(r.stdout.split("RESULTS ", 1)[1])
    assert len(results) == len(CUDA_SHAPES)
    assert all(res["ok"] for res in results), r.stdout


GLUON_CHECK = textwrap.dedent(LOAD + '''
    torch.backends.cuda.matmul.allow_tf32 = False
    results = []
    for n, c_in, c_out, h, w, g, algorithm in json.loads(sys.argv[3]):
        ref, model = models(c_in, c_out, 3, g)
        x = torch.rand(n, c_in, h, w, device="cuda")
        c, gn = model.conv, model.group_norm
        call = lambda: mod.conv_sigmoid_group_norm(x, c.weight, c.bias, model.bias, model.scale, gn.weight, gn.bias,
                                                   gn.num_groups, gn.eps, c.stride, c.padding, c.dilation,
                                                   algorithm=algorithm)
        with torch.no_grad():
            expect = ref.double()(x.double())
            first = call()  # compiles, and tunes the autotuned kernels
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                out = call()
                torch.cuda.synchronize()
        names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        results.append(dict(shape=[n, c_in, c_out, h, w, g], algorithm=algorithm, plain=mod.PLAIN_TRITON,
                            err=max((o.double() - expect).abs().max().item() for o in (first, out)),
                            ok=all(torch.allclose(o.double(), expect, atol=1e-4, rtol=1e-4) for o in (first, out)),
                            launches={k: names.count(k) for k in set(names)}))
        print(results[-1], flush=True)
    print("RESULTS " + json.dumps(results))
''')

# (N, C_in, C_out, H, W, groups, algorithm) where the sm_89 file's fma_config gives a config:
# fma_w128 on a ragged last column tile (W_out 258), by default (recompute) and forced
# materialize; C_out 20 (one ragged channel block); fma_w64 (W_out 98) over two channel blocks;
# and materialize in two L2-sized chunks (6 samples of 8.3 MB values: chunks of 4 and 2).
GLUON_SHAPES = [
    (2, 8, 32, 34, 260, 8, None),
    (2, 8, 32, 34, 260, 8, "materialize"),
    (3, 5, 20, 9, 132, 4, None),
    (2, 3, 40, 7, 100, 4, "recompute"),
    (2, 3, 40, 7, 100, 4, "materialize"),
    (6, 8, 32, 256, 256, 8, "materialize"),
    # W a multiple of 16: recompute's aligned flavour (rules.fma_x_aligned)
    (2, 8, 32, 34, 256, 8, None),
    (2, 3, 40, 7, 80, 4, "recompute"),
]


@cuda
@pytest.mark.parametrize("plain", [False, True], ids=["gluon", "FUSEDCONV_PLAIN_TRITON=1"])
def test_sm89_file_runs_the_gluon_fma_conv_on_cuda(tmp_path, plain):
    """The sm_89 file on the GPU at hand (Triton compiles its Gluon kernels for it) in exact
    fp32 against float64 at KernelBench's 1e-4, the tuned call profiled: the Gluon FMA conv
    kernels and only they run the conv (recompute by default, fma_conv_algorithm; materialize
    one statistics launch per chunk of materialize_chunk samples); with FUSEDCONV_PLAIN_TRITON=1
    their plain-Triton twins run instead, with the plain default, materialize."""
    path = tmp_path / "fusedconv_sm89.py"
    path.write_text(export.render(89))
    env = fresh_env(FUSEDCONV_PLAIN_TRITON="1" if plain else "0")
    r = subprocess.run([sys.executable, "-c", GLUON_CHECK, str(path), str(REFERENCE_PATH), json.dumps(GLUON_SHAPES)],
                       capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads(r.stdout.split("RESULTS ", 1)[1])
    assert len(results) == len(GLUON_SHAPES)
    for (n, _, c_out, h, w, _, algorithm), res in zip(GLUON_SHAPES, results):
        assert res["ok"] and res["plain"] == plain, res
        ran = res["launches"]
        if plain:
            assert not any("fma" in name for name in ran), res
            algorithm = algorithm or rules.default_algorithm("accurate", 8)
            conv = {"materialize": ("conv_stats_kernel", "group_norm_apply_kernel"),
                    "recompute": ("conv_stats_kernel", "conv_norm_kernel")}[algorithm]
            assert set(conv) <= set(ran), res
            continue
        assert rules.fma_conv_config(89, "accurate", 3, 1, 1, 1, w - 2), res
        assert not {"conv_stats_kernel", "conv_norm_kernel"} & set(ran), res
        if (algorithm or rules.fma_conv_algorithm()) == "recompute":
            assert ran.get("conv3x3_fma_stats_kernel") == ran.get("conv3x3_fma_norm_kernel") == 1, res
            assert "group_norm_apply_kernel" not in ran, res
        else:
            chunks = -(-n // rules.materialize_chunk(True, n, c_out, (h - 2) * (w - 2)))
            assert ran.get("conv3x3_fma_stats_kernel") == ran.get("group_norm_apply_kernel") == chunks, res
            assert "conv3x3_fma_norm_kernel" not in ran, res
    assert -(-6 // rules.materialize_chunk(True, 6, 32, 254 * 254)) > 1  # the last shape runs several chunks


@cuda
def test_bench_times_the_exported_file_as_a_peer(tmp_path):
    path = tmp_path / "fusedconv_model_new.py"
    path.write_text(export.render(export.default_arch()[0]))
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "fusedconv", "bench", "--reference", str(REFERENCE_PATH),
                        "--peer", str(path), "--peers", "fusedconv", "--reps", "3", "--json", str(out)],
                       capture_output=True, text=True, timeout=900, env=fresh_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {row["peer"]: row for res in json.loads(out.read_text())["results"] for row in res["rows"]}
    peer = rows[f"peer:{path.stem}"]
    assert peer["allclose"] and peer["ms"] > 0, (peer, r.stdout)
    print(r.stdout)
