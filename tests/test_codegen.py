"""The C++ the build generates from the kernel package (build_scripts/codegen.py): the rules
translated from triton_kernels/rules.py compute what the Python functions compute, and the
typed launchers turn a kernel whose arguments changed into a compile error in the launch code.
No GPU: these compile with the host's g++ against torch's headers, as the build does."""
import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension

from fusedconv.triton_kernels import rules, variants as V

ROOT = Path(__file__).resolve().parents[1]
GXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")


def generate_headers(out_dir, kernel_root=ROOT):
    """codegen's headers for the kernel package under `kernel_root`, in a process of their own:
    the build imports the kernels as fusedconv.triton_kernels from source, which must not meet
    this process's installed fusedconv."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / "build_scripts")!r})
        import aot_build
        aot_build.ROOT = Path({str(kernel_root)!r})
        aot_build.write_headers(Path({str(out_dir)!r}))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env=dict(os.environ, TRITON_INTERPRET="0"))


def compile_syntax(source, include_dirs):
    """g++ -fsyntax-only of one translation unit the way setup.py compiles the op library."""
    import triton
    triton_include = Path(triton.__file__).parent / "backends" / "nvidia" / "include"
    includes = [f"-I{d}" for d in [*include_dirs, ROOT / "csrc", triton_include, *cpp_extension.include_paths()]]
    return subprocess.run([GXX, "-std=c++20", "-fsyntax-only", *includes, str(source)],
                          capture_output=True, text=True)


# Every argument combination each rule distinguishes, and the edges of its thresholds.
ARGUMENTS = {
    "precision_mode": itertools.product(["fp32", "fp16", "bf16"], [False, True]),
    "default_algorithm": itertools.product(rules.MODES, range(1, 20)),
    "fma_conv_algorithm": [()],
    "materialize_chunk": itertools.product([False, True], [1, 4, 5, 128], [1, 32, 40], [1, 64516, 1179648]),
    "fma_conv_config": itertools.product([89, 90], rules.MODES, [0, 3], [1, 2], [1, 2], [1, 2],
                                         [63, 64, 127, 128, 129]),
    "fma_x_aligned": itertools.product([64, 128], [0, 8, 16, 2 ** 40 + 16], [144, 150, 256], [0, 8, 16 * 65536],
                                       [8, 16], [136, 256]),
    "resident_fits": itertools.product([4, 8], [256, 1024], [1, 4, 5, 8, 9], [255, 256, 257, 1024, 1025]),
    "resident_by_default": itertools.product([1, 255, 256, 257, 4096], [1, 2 ** 26, 2 ** 26 + 1]),
    "conv_config": itertools.product([1, 15, 16, 17, 32, 63, 64, 65, 128], [1, 95, 96, 191, 192, 254],
                                     [False, True]),
    "conv_taps": itertools.product([1, 3, 5], [2, 3], [0, 1], [0, 2], [1, 2], [1, 3]),
    "channels_last_taps": itertools.product([1, 3], [3, 5], [0, 1], [0, 1]),
    "channels_last_unit": itertools.product([0, 3], [1, 2], [1, 2], [16, 24, 32], [False, True], [1, 2], [1],
                                            [1, 2], [1]),
    "wide_or_narrow": itertools.product([1, 511, 512, 513], [512], ["b256"], ["b64"]),
    "group_stats_config": ([v] for v in (1, 511, 512, 513)),
    "apply_config": ([v] for v in (1, 511, 512, 513)),
    "copy_config": ([v] for v in (1, 127, 128, 129)),
    "pack_config": ([v] for v in (2, 8, 10, 26)),
    "output_size": itertools.product([5, 17, 256], [0, 1, 2], [1, 2], [1, 3, 5], [1, 2, 3]),
}


def _cpp_literal(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'std::string_view("{v}")'
    return f"int64_t{{{v}}}"


@pytest.mark.skipif(GXX is None, reason="needs g++, which the build needs too")
def test_rules_in_cpp_compute_what_rules_py_computes(tmp_path):
    generate_headers(tmp_path)
    assert set(ARGUMENTS) == {n for n, f in vars(rules).items() if callable(f)}, "a rule without test arguments"
    cases = [(name, tuple(args)) for name, grid in ARGUMENTS.items() for args in grid]
    lines = ['#include <iostream>', '#include "fusedconv_rules.h"', "using namespace fusedconv::rules;",
             "int main() {", "  std::cout << std::boolalpha;"]
    lines += [f'  std::cout << {name}({", ".join(map(_cpp_literal, args))}) << "\\n";' for name, args in cases]
    lines += ["}"]
    (tmp_path / "rules_main.cpp").write_text("\n".join(lines))
    subprocess.run([GXX, "-std=c++20", f"-I{tmp_path}", str(tmp_path / "rules_main.cpp"), "-o",
                    str(tmp_path / "rules_main")], check=True)
    out = subprocess.run([str(tmp_path / "rules_main")], check=True, capture_output=True, text=True).stdout.split("\n")
    for (name, args), got in zip(cases, out):
        want = getattr(rules, name)(*args)
        assert got == (str(want).lower() if isinstance(want, bool) else str(want)), f"{name}{args}"


def test_rules_name_configs_the_build_ships():
    """The config names the rules return are in the tables the runtime looks them up in."""
    names = lambda configs: {c.name for c in configs}  # noqa: E731
    assert {rules.conv_config(c, w, cl) for c, w, cl in ARGUMENTS_GRID_CONV} <= names(V.CONV_CONFIGS) & names(
        V.CL_CONV_CONFIGS)
    assert {rules.group_stats_config(r) for r in (1, 512)} == names(V.GROUP_STATS_CONFIGS)
    assert {rules.apply_config(r) for r in (1, 512)} == names(V.APPLY_CONFIGS)
    assert {rules.copy_config(w) for w in (1, 128)} == names(V.TRANSPOSE_CONFIGS)
    assert {rules.pack_config(t) for t in (2, 10)} == names(V.PACK_CONFIGS)
    assert {rules.default_algorithm(m, c) for m in rules.MODES for c in (1, 9)} <= set(rules.ALGORITHMS)
    assert {rules.fma_conv_config(89, "accurate", 3, 1, 1, 1, w) for w in (64, 128)} == names(V.FMA_CONV_CONFIGS)


ARGUMENTS_GRID_CONV = list(itertools.product([1, 16, 17, 63, 64, 128], [1, 95, 96, 191, 192], [False, True]))


@pytest.mark.skipif(GXX is None, reason="needs g++, which the build needs too")
def test_a_kernel_argument_the_launch_code_does_not_pass_breaks_the_build(tmp_path):
    """A kernel that gains an argument changes its generated Args struct; launch.cpp, which
    fills the old list, must then fail to compile at that kernel's launch. The unchanged
    kernels' headers compile."""
    generate_headers(tmp_path / "as_is")
    ok = compile_syntax(ROOT / "csrc" / "launch.cpp", [tmp_path / "as_is"])
    assert ok.returncode == 0, ok.stderr[-3000:]

    edited = tmp_path / "edited"
    shutil.copytree(ROOT / "triton_kernels", edited / "triton_kernels")
    source = edited / "triton_kernels" / "conv_sigmoid_groupnorm.py"
    text = source.read_text()
    anchor = "def group_stats_kernel(\n"
    assert anchor in text
    source.write_text(text.replace(anchor, anchor + "    extra_block_count,\n", 1))
    generate_headers(tmp_path / "edited_gen", kernel_root=edited)
    assert "Arg<int32_t> extra_block_count;" in (tmp_path / "edited_gen" / "fusedconv_kernels.h").read_text()
    broken = compile_syntax(ROOT / "csrc" / "launch.cpp", [tmp_path / "edited_gen"])
    assert broken.returncode != 0
    assert "GroupStatsKernel::Args" in broken.stderr, broken.stderr[-3000:]
