"""`python -m fusedconv export`: the standalone KernelBench-style file.

Statically, by parsing it (both archs): its imports, its top-level order, no forbidden names,
autotune over the build's configs, kernels that are the source's text, ModelNew's constructor.
Under the Triton interpreter: the file imported from a directory of its own, every config and
the autotune path itself (with a stand-in benchmarker) against the reference. On CUDA, in
fresh processes: allclose against the reference on the benchmark shape (fp32 and fp16) and odd
shapes in every dtype, and `bench --peer FILE`.
"""
import ast
import importlib.util
import inspect
import itertools
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import REFERENCE_PATH, Case, expected, random_input, reference, reference_model

triton = pytest.importorskip("triton")
from fusedconv import export  # noqa: E402
from fusedconv.triton_kernels import conv_sigmoid_groupnorm as K  # noqa: E402
from fusedconv.triton_kernels import variants as V  # noqa: E402
import test_kernels_interpreter  # noqa: E402

ARCHS = [89, 90]
ALLOWED_IMPORTS = {"import torch", "import torch.nn as nn", "from torch import nn", "import triton",
                   "import triton.language as tl"}
FORBIDDEN_TL = {"sigmoid", "tanh", "gelu", "silu", "softmax", "mish"}
# The autotuned kernels, and which of them each launch sequence runs (conv_cl_norm_kernel
# follows conv_cl_stats_kernel's choice: export.FOLLOWERS).
TABLES = {"conv_stats_kernel": V.CONV_CONFIGS, "group_stats_kernel": V.GROUP_STATS_CONFIGS,
          "group_norm_apply_kernel": V.APPLY_CONFIGS, "to_channels_last_kernel": V.TRANSPOSE_CONFIGS,
          "pack_weight_kernel": V.PACK_CONFIGS, "conv_cl_stats_kernel": V.CL_CONV_CONFIGS}
SEQUENCES = {torch.float32: ("conv_stats_kernel", "group_stats_kernel", "group_norm_apply_kernel"),
             torch.float16: ("to_channels_last_kernel", "pack_weight_kernel", "conv_cl_stats_kernel",
                             "group_stats_kernel")}
SEQUENCES[torch.bfloat16] = SEQUENCES[torch.float16]
interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="TRITON_INTERPRET=1 must be set before Triton is imported")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Autouse: the Triton 3.6 interpreter's bugs, mended as for the kernel tests.
interpreter_fixes = test_kernels_interpreter.interpreter_fixes


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


def launched(tree):
    """Names launched as kernel[grid](...) anywhere in the file."""
    return {n.value.id for n in ast.walk(tree)
            if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and isinstance(n.ctx, ast.Load)
            and n.value.id.endswith("_kernel")}


def import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- static checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_top_level_is_imports_then_kernels_then_wrappers_then_modelnew(files, arch):
    tree = tree_of(files, arch)
    kinds = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            kinds.append("import")
            assert ast.unparse(node) in ALLOWED_IMPORTS, ast.unparse(node)
        elif isinstance(node, ast.FunctionDef):
            kinds.append("kernel" if "triton.jit" in decorators(node) else "wrapper")
        elif isinstance(node, ast.ClassDef) and node.name == "ModelNew":
            kinds.append("model")
        else:  # no docstring, constant, test, `if __name__`, get_inputs...
            pytest.fail(f"unexpected top-level statement: {ast.unparse(node)[:80]}")
    order = [k for k, _ in itertools.groupby(kinds)]
    assert order == ["import", "kernel", "wrapper", "model"], order
    imports = {ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert {"import torch", "import triton", "import triton.language as tl"} <= imports
    assert imports & {"import torch.nn as nn", "from torch import nn"}
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
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
    kernels = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and "triton.jit" in decorators(n)}
    assert launched(tree) == set(TABLES) | set(export.FOLLOWERS)
    for name, node in kernels.items():
        autotune = [d for d in node.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func) == "triton.autotune"]
        if name not in TABLES:
            assert decorators(node) == ["triton.jit"], f"{name} is a helper or a follower: jit only"
            continue
        assert len(autotune) == 1 and decorators(node)[0] == "triton.autotune" and decorators(node)[-1] == "triton.jit"
        kw = {k.arg: k.value for k in autotune[0].keywords}
        got = []
        for c in kw["configs"].elts:
            assert ast.unparse(c.func) == "triton.Config"
            got.append((ast.literal_eval(c.args[0]), *(ast.literal_eval(k.value) for k in c.keywords)))
        assert got == [(c.meta, c.num_warps, c.num_stages) for c in TABLES[name]]
        assert 2 <= len(got) <= 3
        # The key holds every shape argument the kernel gets, so a new shape is tuned again.
        key = ast.literal_eval(kw["key"])
        arg_names = set(getattr(K, name).arg_names)
        shapes = arg_names & {"C_in", "C_out", "H", "W", "H_out", "W_out", "HW_out", "KH", "KW", "KT", "TP"}
        assert shapes and shapes - set(export.DERIVED.get(name, ())) <= set(key) <= arg_names


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
def test_modelnew_has_the_reference_constructor_and_state_dict(files, arch):
    module = import_file(files[arch], f"exported_static_sm{arch}")
    assert inspect.signature(module.ModelNew.__init__) == inspect.signature(reference.Model.__init__)
    init = reference.get_init_inputs()
    ref = reference.Model(*init)
    model = module.ModelNew(*init)
    assert list(model.state_dict()) == list(ref.state_dict())
    model.load_state_dict(ref.state_dict())


@pytest.mark.parametrize("arch", ARCHS)
def test_precision_is_the_arch_table(files, arch):
    module = import_file(files[arch], f"exported_precision_sm{arch}")
    assert module.dot_precision(torch.float32) == V.precisions(arch, "fp32")["accurate"]
    assert module.dot_precision(torch.bfloat16) == V.precisions(arch, "bf16")["native"]
    assert module.dot_precision(torch.float16) == V.precisions(arch, "fp16")["native"]
    torch.set_float32_matmul_precision("high")
    try:
        assert module.dot_precision(torch.float32) == V.precisions(arch, "fp32")["tf32"]
    finally:
        torch.set_float32_matmul_precision("highest")
    with pytest.raises(TypeError):
        module.dot_precision(torch.float64)


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
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
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


def run_model(module, case, dtype=torch.float32):
    ref = reference_model(case)
    model = module.ModelNew(*reference.get_init_inputs(case.c_in, case.c_out, case.kernel, case.groups))
    model.load_state_dict(ref.state_dict())
    model.conv.stride, model.conv.padding, model.conv.dilation = case.stride, case.padding, case.dilation
    model = model.to(dtype)
    x = random_input(case).to(dtype)
    with torch.no_grad():
        out = model(x)
    exp = expected(case, x, ref, dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert out.dtype == dtype and out.shape == exp.shape
    torch.testing.assert_close(out.double(), exp, atol=tol, rtol=tol)


@interpreted
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pick", range(3))
def test_every_config_under_the_interpreter(files, arch, pick):
    """Autotuning needs a GPU benchmarker, so each kernel is pinned to one of its configs (an
    autotuner with a single config runs it untimed): picks 0..2 cover every config."""
    module = import_file(files[arch], f"exported_pinned_sm{arch}_{pick}")
    for name in TABLES:
        tuner = getattr(module, name)
        tuner.configs = [tuner.configs[pick % len(tuner.configs)]]
    for case in CASES:
        run_model(module, case)
        run_model(module, case, torch.float16)  # the channels-last sequence


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("winner", [0, 1, 2])
def test_autotune_path_under_the_interpreter(files, dtype, winner):
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
    for name in TABLES:
        tuner = getattr(module, name)
        order = iter(range(len(tuner.configs)))

        def bench(kernel_call, quantiles, order=order, n=len(tuner.configs)):
            i = next(order)
            kernel_call()
            kernel_call()
            return [0.0 if i == winner % n else 1.0] * len(quantiles)
        tuner.do_bench = bench
    run_model(module, CASES[1], dtype)
    for name in SEQUENCES[dtype]:
        tuner = getattr(module, name)
        assert tuner.best_config == tuner.configs[winner % len(tuner.configs)]


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_triton_jit_runs_the_exported_wrapper_under_the_interpreter(monkeypatch, case, dtype):
    """fusedconv.triton_jit (the benchmark's fusedconv-jit peer) runs the exported file with
    the C++ runtime's configs pinned, in both launch sequences; the interpreter stands in for
    an sm_90 GPU."""
    from fusedconv import triton_jit
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    ref = reference_model(case)
    x = random_input(case).to(dtype)
    c, gn = ref.conv, ref.group_norm
    params = [t.detach().to(dtype) for t in (c.weight, c.bias, ref.bias, ref.scale, gn.weight, gn.bias)]
    with torch.no_grad():
        out = triton_jit.forward(x, *params, case.groups, gn.eps, case.stride, case.padding, case.dilation)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected(case, x, ref, dtype), atol=tol, rtol=tol)


def test_exported_algorithm_rule_is_the_ops(files):
    """The standalone file cannot import fusedconv, so it carries its own copy of the op's
    default algorithm rule: the two agree in every mode on both sides of the 8-channel limit."""
    module = import_file(files[90], "exported_rule")
    previous = torch.get_float32_matmul_precision()
    try:
        for dtype, mode, precision in ((torch.float32, "accurate", "highest"), (torch.float32, "tf32", "high"),
                                       (torch.float16, "native", "highest"), (torch.bfloat16, "native", "highest")):
            torch.set_float32_matmul_precision(precision)
            for c_in in range(1, 21):
                assert module.algorithm(dtype, c_in) == torch.ops.fusedconv._default_algorithm(mode, c_in), \
                    (dtype, precision, c_in)
    finally:
        torch.set_float32_matmul_precision(previous)
    rule = torch.ops.fusedconv._default_algorithm
    assert [rule("native", 8), rule("native", 9), rule("tf32", 8), rule("tf32", 64), rule("accurate", 3)] == \
        ["channels_last", "materialize", "channels_last", "materialize", "materialize"]
    with pytest.raises(ValueError, match="mode must be"):
        rule("fp16", 8)
    with pytest.raises(ValueError, match="c_in must be positive"):
        rule("native", 0)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_more_than_8_input_channels_run_materialize_under_the_interpreter(files, dtype):
    """16-bit inputs with two chunks of input channels take the materialize sequence (fp32
    values through group_norm_apply_kernel), not channels_last, and match the reference."""
    module = import_file(files[90], f"exported_wide_{str(dtype)[6:]}")
    for name in TABLES:
        tuner = getattr(module, name)
        tuner.configs = tuner.configs[-1:]  # the small fallbacks, run untimed
    run_model(module, Case(n=1, c_in=9, c_out=16, h=7, w=9, groups=4, padding=(1, 1)), dtype)
    ran = {name for name in TABLES if hasattr(getattr(module, name), "best_config")}
    assert ran == set(SEQUENCES[torch.float32]), ran


# --- CUDA, in fresh processes (conftest's TRITON_INTERPRET stays out of them) -----------------

CHECK = textwrap.dedent('''
    import importlib.util, json, sys
    import torch
    spec = importlib.util.spec_from_file_location("model_new", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    spec = importlib.util.spec_from_file_location("reference", sys.argv[2])
    ref_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref_mod)
    torch.backends.cudnn.allow_tf32 = False
    import fusedconv.triton_jit as jit
    results = []
    for n, c_in, c_out, h, w, k, g, dtype in json.loads(sys.argv[3]):
        dtype = getattr(torch, dtype)
        torch.manual_seed(0)
        init = ref_mod.get_init_inputs(c_in, c_out, k, g)
        ref = ref_mod.Model(*init).cuda()
        with torch.no_grad():
            ref.group_norm.weight.normal_()
            ref.group_norm.bias.normal_()
        model = mod.ModelNew(*init)
        model.load_state_dict(ref.state_dict())
        model = model.cuda().to(dtype)
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


def fresh_env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@cuda
@pytest.mark.parametrize("arch", ARCHS)
def test_exported_file_matches_the_reference_on_cuda(tmp_path, arch):
    """Both archs' files run on any recent GPU: they differ only in the fp32 tl.dot precision
    (sm_89's exact FMA path is what an RTX 4090 runs)."""
    path = tmp_path / "fusedconv_model_new.py"
    path.write_text(export.render(arch))
    r = subprocess.run([sys.executable, "-c", CHECK, str(path), str(REFERENCE_PATH), json.dumps(CUDA_SHAPES)],
                       capture_output=True, text=True, timeout=900, env=fresh_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads(r.stdout.split("RESULTS ", 1)[1])
    assert len(results) == len(CUDA_SHAPES)
    assert all(res["ok"] for res in results), r.stdout


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
