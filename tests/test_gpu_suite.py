"""benchmarks/run_gpu_suite.sh, which device calls run step by step: every step it lists exists, and every
benchmark command of every step names a script that accepts its arguments (checked on CPU by parsing them and
stopping there), so a typo cannot cost a device call."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "run_gpu_suite.sh"

# Runs a script as __main__, but ends it with exit code 0 as soon as its argument parser has accepted argv.
PARSE_ONLY = """
import argparse, runpy, sys
parse = argparse.ArgumentParser.parse_args
def parse_then_stop(self, args=None, namespace=None):
    parse(self, args, namespace)
    print("ARGUMENTS ACCEPTED")
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse_then_stop
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def steps() -> list[str]:
    return re.findall(r"^    ([a-z0-9_]+)\)", SUITE.read_text(), flags=re.M)


@pytest.fixture(scope="module")
def invocations(tmp_path_factory):
    """Every python3 command the suite runs, recorded by a stand-in for python3 on the PATH."""
    folder = tmp_path_factory.mktemp("suite")
    log = folder / "invocations.jsonl"
    stub = folder / "bin" / "python3"
    stub.parent.mkdir()
    stub.write_text(f'#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n')
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stub.parent}:{os.environ['PATH']}", OUT=str(folder / "out"),
               STEPS=" ".join(steps()))
    result = subprocess.run(["bash", str(SUITE)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "unknown step" not in result.stdout
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_the_header_names_every_step_and_only_steps():
    header = SUITE.read_text().split("run() {")[0]
    named = re.search(r'STEPS=\$\{STEPS:-"([^"]+)"\}', header).group(1).split()
    for line in header.splitlines():
        if line.startswith(("# other steps:", "# one per device call")):
            named += line.rsplit(": ", 1)[1].split()
    assert sorted(named) == sorted(steps())


def test_every_benchmark_command_accepts_its_arguments(invocations):
    commands = {tuple(argv) for argv in invocations if argv and argv[0].startswith("benchmarks/")}
    assert len(commands) >= 15  # every step ran its commands through the stand-in
    for argv in sorted(commands):
        assert (ROOT / argv[0]).exists(), argv[0]
        result = subprocess.run([sys.executable, "-c", PARSE_ONLY, *argv], cwd=ROOT, capture_output=True, text=True,
                                env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"), timeout=300)
        assert result.returncode == 0 and "ARGUMENTS ACCEPTED" in result.stdout, (argv, result.stderr[-2000:])
