"""benchmarks/ab_decode.py, the in-process A/B behind BENCHMARKS.md's switch and XLA-option comparisons: its
variants parse as written, and a tiny run times each variant and checks its tokens against the first."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import ab_decode


def test_an_xla_variant_is_a_label_and_typed_options():
    assert ab_decode.parse_xla_variant("default") == ("default", {})
    assert ab_decode.parse_xla_variant("pdl:xla_gpu_enable_pdl=true,xla_gpu_autotune_level=0,x=fast") == (
        "pdl", {"xla_gpu_enable_pdl": True, "xla_gpu_autotune_level": 0, "x": "fast"})
    with pytest.raises(SystemExit, match="not NAME=VALUE"):
        ab_decode.parse_xla_variant("bad:xla_gpu_enable_pdl")


@pytest.mark.parametrize("workload", ["generate", "dllm"])
def test_a_tiny_run_times_every_variant_and_compares_tokens(workload, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["ab_decode.py", "--shape", "tiny", "--workload", workload, "--rounds", "1",
                                      "--context", "40", "--new", "8",
                                      "--xla-options", "default", "pdl:xla_gpu_enable_pdl=true"])
    ab_decode.main()
    results = json.loads((tmp_path / "ab_decode.json").read_text())
    assert results["unit"] == ("ms/pass" if workload == "dllm" else "ms/token")
    assert set(results["ms"]) == {"default", "pdl"} and all(len(v) == 1 and v[0] > 0 for v in results["ms"].values())
    assert results["tokens_identical"] == {"default": [True], "pdl": [True]}
    assert "| pdl |" in capsys.readouterr().out
