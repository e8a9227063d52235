"""compute-sanitizer's memcheck, racecheck, initcheck and synccheck report 0 errors over
tests/sanitize_driver.py (ragged shapes, every dtype, config and algorithm), with the native
cubins and with the sm_89 PTX forced. One subprocess per (tool, images): ~20-60 s each.
Skipped without a GPU or without compute-sanitizer on PATH."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import fresh_env

TESTS = Path(__file__).resolve().parent
SANITIZER = shutil.which("compute-sanitizer")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(SANITIZER is None, reason="compute-sanitizer is not on PATH"),
    # The suite's forced-PTX pass would repeat these: they set the variable themselves.
    pytest.mark.skipif(bool(os.environ.get("FUSEDCONV_FORCE_PTX")), reason="run in the native pass"),
]

# What each tool prints when it is clean.
CLEAN = {
    "memcheck": r"ERROR SUMMARY: 0 errors",
    "racecheck": r"RACECHECK SUMMARY: 0 hazards displayed \(0 errors, 0 warnings\)",
    "initcheck": r"ERROR SUMMARY: 0 errors",
    "synccheck": r"ERROR SUMMARY: 0 errors",
}


@pytest.mark.parametrize("images", ["native", "ptx89"])
@pytest.mark.parametrize("tool", list(CLEAN))
def test_sanitizer_reports_no_errors(tool, images):
    env = fresh_env("FUSEDCONV_FORCE_PTX", tests_on_path=True, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    env["SANITIZE_CONFIGS"] = "all" if tool in ("memcheck", "initcheck") else "heuristic"
    if images == "ptx89":
        env["FUSEDCONV_FORCE_PTX"] = "89"
    cmd = [SANITIZER, "--tool", tool, "--error-exitcode", "97", sys.executable, str(TESTS / "sanitize_driver.py")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    report = r.stdout + r.stderr
    tail = "\n".join(report.splitlines()[-60:])
    assert "sanitize_driver ok" in r.stdout, f"{tool}/{images}: the workload did not finish:\n{tail}"
    assert r.returncode == 0 and re.search(CLEAN[tool], report), f"{tool}/{images} found errors:\n{tail}"
