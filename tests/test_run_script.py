"""build_scripts/run.sh, the README's commands: what decides a rebuild, and the skip itself.

The script runs here on a miniature checkout (a copy of run.sh beside a few stand-in sources)
with PYTHON pointing at a wrapper around this interpreter that records `pip install` and
`pytest` instead of running them: the real build takes minutes and belongs to no test. The
default path (creating .venv and installing torch into it) is left to CI, which runs it."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import fusedconv

RUN_SH = Path(__file__).resolve().parents[1] / "build_scripts" / "run.sh"
SOURCES = {"setup.py": "setup()\n", "pyproject.toml": "[project]\n", "csrc/ops.cpp": "int f();\n",
           "triton_kernels/k.py": "K = 1\n", "python/fusedconv/__init__.py": "",
           "build_scripts/aot_build.py": "B = 1\n", "README.md": "# x\n", "tests/test_x.py": "",
           ".gitignore": "build/\n__pycache__/\n*.so\n.venv/\n"}

# Passes everything to the real interpreter except the two steps that would build or test.
FAKE_PYTHON = """#!/bin/bash
case "$1 $2" in
  "-m pip") echo "pip $*" >> "$FAKE_LOG"
            [ "${FAKE_PIP_FAILS:-}" = 1 ] && { echo "error: build failed"; exit 1; }
            [ -n "${FAKE_EDIT_DURING_BUILD:-}" ] && echo "// edited" >> "$FAKE_EDIT_DURING_BUILD"
            echo "Successfully installed fusedconv-0.1.0"; exit 0 ;;
  "-m pytest") echo "pytest $*" >> "$FAKE_LOG"; exit 0 ;;
esac
exec "$REAL_PYTHON" "$@"
"""


def make_checkout(root, git):
    root.mkdir(parents=True, exist_ok=True)
    for name, text in SOURCES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    shutil.copy(RUN_SH, root / "build_scripts" / "run.sh")
    if git:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run(["git", "add", "."], cwd=root, check=True)
    return root


def sourced(root, call, **env):
    """Runs a run.sh function with the script sourced (which defines functions and runs nothing)."""
    r = subprocess.run(["bash", "-c", f'source build_scripts/run.sh && PY="{sys.executable}" && {call}'],
                       cwd=root, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    return r.stdout


# (change, whether it must trigger a rebuild)
CHANGES = [
    ("csrc/ops.cpp", "int g();\n", True),
    ("csrc/new_file.cpp", "int h();\n", True),   # a new, untracked source: setup.py globs csrc/
    ("setup.py", "setup(name='x')\n", True),
    ("pyproject.toml", "[tool]\n", True),
    ("triton_kernels/k.py", "K = 2\n", True),
    ("python/fusedconv/__init__.py", "X = 1\n", True),
    ("build_scripts/aot_build.py", "B = 2\n", True),
    ("README.md", "# y\n", False),
    ("tests/test_x.py", "X = 1\n", False),
    ("build_scripts/run.sh", None, False),       # the script itself feeds nothing into the wheel
    ("python/fusedconv/__pycache__/m.cpython-311.pyc", "junk", False),
    ("python/fusedconv/_C.so", "junk", False),
    ("build/temp/x.o", "junk", False),
]


@pytest.mark.parametrize("git", [True, False], ids=["git", "no-git"])
@pytest.mark.parametrize("path,text,rebuild", CHANGES, ids=[c[0] for c in CHANGES])
def test_sources_hash_follows_exactly_the_build_inputs(tmp_path, git, path, text, rebuild):
    root = make_checkout(tmp_path, git)
    before = sourced(root, "sources_hash")
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        with target.open("a") as f:
            f.write("# an edit\n")
    else:
        target.write_text(text)
    assert (sourced(root, "sources_hash") != before) == rebuild


def test_install_state_tracks_the_build_variables_and_the_installed_library(tmp_path):
    root = make_checkout(tmp_path, git=True)
    state = sourced(root, "install_state")
    assert state == sourced(root, "install_state")
    assert sourced(root, "install_state", FUSEDCONV_ARCHS="not-the-default") != state
    installed = [line for line in state.splitlines() if line.startswith("installed")]
    lib = Path(fusedconv.__file__).parent / "_C.so"
    assert installed and installed[0].split()[:2] == ["installed", str(lib)], state


def fake_python(tmp_path):
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


def run_sh(root, fake, *args, **env):
    env = {**os.environ, "PYTHON": str(fake), "REAL_PYTHON": sys.executable,
           "FAKE_LOG": str(root / "fake.log"), **env}
    return subprocess.run(["bash", "build_scripts/run.sh", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def builds(root):
    log = root / "fake.log"
    return [line for line in log.read_text().splitlines() if line.startswith("pip") and line.endswith(" .")] \
        if log.exists() else []


def test_second_call_skips_the_build_until_a_source_changes(tmp_path):
    root = make_checkout(tmp_path / "repo", git=True)
    fake = fake_python(tmp_path)
    first = run_sh(root, fake, "test", "tests/test_x.py")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"python: {fake} (from PYTHON" in first.stdout
    assert "building and installing fusedconv" in first.stdout and len(builds(root)) == 1

    second = run_sh(root, fake, "test", "tests/test_x.py")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "up to date, skipping build" in second.stdout and len(builds(root)) == 1
    # pytest gets the skip reasons and only the paths asked for, not tests/ besides.
    assert (root / "fake.log").read_text().splitlines()[-1].endswith("-m pytest -q -p no:warnings -rsfE tests/test_x.py")

    (root / "csrc" / "ops.cpp").write_text("int changed();\n")
    third = run_sh(root, fake, "test")
    assert "skipping" not in third.stdout and len(builds(root)) == 2, third.stdout


def test_a_failed_build_is_not_recorded_as_installed(tmp_path):
    root = make_checkout(tmp_path / "repo", git=True)
    fake = fake_python(tmp_path)
    failed = run_sh(root, fake, "test", FAKE_PIP_FAILS="1")
    assert failed.returncode == 1 and "install failed" in failed.stdout, failed.stdout + failed.stderr
    again = run_sh(root, fake, "test")
    assert again.returncode == 0 and "skipping" not in again.stdout and len(builds(root)) == 2, again.stdout


def test_usage_and_a_missing_interpreter(tmp_path):
    root = make_checkout(tmp_path, git=False)
    usage = subprocess.run(["bash", "build_scripts/run.sh"], cwd=root, capture_output=True, text=True)
    assert usage.returncode == 2 and "bench|test" in usage.stdout and "PYTHON=" in usage.stdout
    missing = subprocess.run(["bash", "build_scripts/run.sh", "test"], cwd=root, capture_output=True, text=True,
                             env={**os.environ, "PYTHON": str(tmp_path / "no-python")})
    assert missing.returncode == 1 and f"PYTHON={tmp_path / 'no-python'}: no such interpreter" in missing.stdout
    assert not (root / ".venv").exists()


def test_sources_edited_during_the_build_are_built_next_time(tmp_path):
    """The stamp holds the sources as the build began: an edit made while it runs (a 5-minute
    first build is long enough for one) is not taken as built."""
    root = make_checkout(tmp_path / "repo", git=True)
    fake = fake_python(tmp_path)
    first = run_sh(root, fake, "test", FAKE_EDIT_DURING_BUILD=str(root / "csrc" / "ops.cpp"))
    assert first.returncode == 0 and len(builds(root)) == 1, first.stdout + first.stderr
    second = run_sh(root, fake, "test")
    assert "skipping" not in second.stdout and len(builds(root)) == 2, second.stdout
    third = run_sh(root, fake, "test")
    assert "up to date, skipping build" in third.stdout and len(builds(root)) == 2, third.stdout
