"""The Colab notebook and the TPU-VM script serve real checkpoints; their code path runs here on a tiny pair (CPU),
and the notebook is held to the script's functions so the two cannot drift apart."""

import ast
import inspect
import json
import os

import numpy as np
import pytest

from examples import tiny_checkpoints, tpu_vm_failfast

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "colab_failfast.ipynb")


@pytest.fixture(scope="module")
def tiny_snapshots(tmp_path_factory):
    """(verifier, drafter) directories laid out like downloaded HF snapshots: config, safetensors, tokenizer."""
    verifier_hf, drafter_hf = tiny_checkpoints.write_pair(str(tmp_path_factory.mktemp("snapshots")))
    tokenizer = tiny_checkpoints.chat_tokenizer()
    for directory in (verifier_hf, drafter_hf):
        tokenizer.save_pretrained(directory)
    return verifier_hf, drafter_hf


def test_script_converts_once_and_reproduces_greedy_decoding(tiny_snapshots, tmp_path, capsys, monkeypatch):
    verifier_hf, drafter_hf = tiny_snapshots
    argv = ["--verifier-hf", verifier_hf, "--drafter-hf", drafter_hf, "--work", str(tmp_path),
            "--dtype", "float32", "--prompt", "Say hello.", "--max-new-tokens", "40", "--compare-vanilla"]
    results = []
    real_run = tpu_vm_failfast.run

    def recording_run(*args, **kwargs):
        results.append(real_run(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(tpu_vm_failfast, "run", recording_run)

    assert tpu_vm_failfast.main(argv) == 0
    out = capsys.readouterr().out
    assert "devices:" in out and "verifier: converted" in out and "identical to greedy decoding: True" in out
    speculative, vanilla = results[0].speculative, results[0].vanilla
    assert speculative.stats.rounds > 0 and len(speculative.tokens) > 1
    np.testing.assert_array_equal(speculative.tokens, vanilla.tokens)

    assert tpu_vm_failfast.main(argv) == 0
    out = capsys.readouterr().out
    assert "verifier: reusing" in out and "drafter: reusing" in out


def notebook_code_cells() -> list[str]:
    with open(NOTEBOOK) as f:
        notebook = json.load(f)
    assert notebook["nbformat"] == 4
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def without_shell_lines(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("!", "%")))


def test_notebook_compiles_and_calls_the_script_as_it_is():
    cells = [without_shell_lines(cell) for cell in notebook_code_cells()]
    for i, source in enumerate(cells):
        compile(source, f"{NOTEBOOK} code cell {i}", "exec")
    tree = ast.parse("\n".join(cells))
    aliases = [alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module == "examples" for alias in node.names if alias.name == "tpu_vm_failfast"]
    assert len(aliases) == 1, "the notebook must import examples/tpu_vm_failfast.py once"
    calls = {node.func.attr: node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
             and node.func.value.id == aliases[0]}
    assert {"convert_pair", "load_pair", "chat_prompt", "run", "print_report"} <= set(calls)
    for name, call in calls.items():
        # Raises TypeError when the notebook passes arguments the script's function no longer takes.
        inspect.signature(getattr(tpu_vm_failfast, name)).bind(*call.args, **{k.arg: k.value for k in call.keywords})


def test_notebook_downloads_no_code_and_no_pickles():
    tree = ast.parse("\n".join(without_shell_lines(cell) for cell in notebook_code_cells()))
    downloads = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and getattr(node.func, "id", None) == "snapshot_download"]
    assert len(downloads) == 2
    assignments = {target.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                   for target in node.targets if isinstance(target, ast.Name)}
    for call in downloads:
        patterns = next(k.value for k in call.keywords if k.arg == "allow_patterns")
        patterns = ast.literal_eval(assignments[patterns.id] if isinstance(patterns, ast.Name) else patterns)
        assert patterns and not any(p == "*" or p.endswith((".py", ".bin", ".pt", ".pth")) for p in patterns)
