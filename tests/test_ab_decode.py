"""benchmarks/ab_decode.py, the in-process A/B behind BENCHMARKS.md's switch and XLA-option comparisons: its
variants parse as written, a tiny run times each variant and checks its tokens against the first, and a variant
that fails is reported without stopping the others."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from benchmarks import ab_decode
from ffjax import executables

TINY = ["--shape", "tiny", "--rounds", "1", "--context", "40", "--new", "8"]


def test_an_xla_variant_is_a_label_and_typed_options():
    assert ab_decode.parse_xla_variant("default") == ("default", {})
    assert ab_decode.parse_xla_variant("pdl:xla_gpu_enable_pdl=true,xla_gpu_autotune_level=0,x=fast") == (
        "pdl", {"xla_gpu_enable_pdl": True, "xla_gpu_autotune_level": 0, "x": "fast"})
    with pytest.raises(SystemExit, match="not NAME=VALUE"):
        ab_decode.parse_xla_variant("bad:xla_gpu_enable_pdl")


def test_a_tiny_drafter_run_times_every_xla_variant_and_compares_tokens(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    ab_decode.main([*TINY, "--workload", "dllm", "--xla-options", "default", "pdl:xla_gpu_enable_pdl=true"])
    results = json.loads((tmp_path / "ab_decode.json").read_text())
    assert results["unit"] == "ms/pass"
    assert set(results["ms"]) == {"default", "pdl"} and all(len(v) == 1 and v[0] > 0 for v in results["ms"].values())
    assert results["tokens_identical"] == {"default": [True], "pdl": [True]}
    assert "| pdl |" in capsys.readouterr().out


def test_a_trial_scripts_own_variants_run_and_a_failing_one_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))

    @contextlib.contextmanager
    def attention(impl):
        with monkeypatch.context() as patch:
            patch.setenv("FFJAX_ATTENTION", impl)
            yield

    cases = ("attention", [("auto", lambda: attention("auto")), ("unknown", lambda: attention("unknown"))])
    ab_decode.main([*TINY, "--keep-going"], cases=cases)
    results = json.loads((tmp_path / "ab_decode.json").read_text())
    assert results["unit"] == "ms/token" and results["failed"] == ["unknown"] and len(results["ms"]["auto"]) == 1
    assert "| unknown | failed |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown attention implementation"):
        ab_decode.main(TINY, cases=cases)  # without --keep-going a failure stops the run


def test_a_plan_variant_adds_entries_keyed_as_the_decoder_asks_and_restores_the_table():
    from pallas_kernels import skinny_gemm
    label, entries = ab_decode.parse_plan_variant("gate_up:1x37888x3584=64/256/4/2;32x2048x1536=64/128/8/6")
    assert label == "gate_up" and entries == {
        (8, 37888, 3584): skinny_gemm.SkinnyConfig(block_n=64, block_k=256, max_concurrent_steps=4, split_k=2),
        (32, 2048, 1536): skinny_gemm.SkinnyConfig(block_n=64, block_k=128, max_concurrent_steps=8, split_k=6)}
    landed = dict(skinny_gemm.PLANS)
    with ab_decode.added_plans(entries):
        assert skinny_gemm.plan(2, 37888, 3584) == entries[(8, 37888, 3584)]  # a lone row's GEMM has 2 rows
        assert skinny_gemm.PLANS.items() >= landed.items()
    assert skinny_gemm.PLANS == landed
    with pytest.raises(SystemExit, match="not RxNxK=BN/BK/STEPS/SPLIT"):
        ab_decode.parse_plan_variant("bad:1x2x3=64/256")


def test_an_env_switch_and_xla_options_together_give_every_combination(monkeypatch):
    monkeypatch.setenv("FFJAX_PALLAS_PDL", "off")
    args = ab_decode.argparse.Namespace(env="FFJAX_PALLAS_PDL=off,on", values=None, skinny_plans=None,
                                        xla_options=["default", "pdl:xla_gpu_enable_pdl=true"])
    varied, cases = ab_decode.variants(args)
    assert varied == "FFJAX_PALLAS_PDL x XLA options"
    assert [label for label, _ in cases] == ["off/default", "off/pdl", "on/default", "on/pdl"]
    with cases[3][1]():
        assert os.environ["FFJAX_PALLAS_PDL"] == "on"
        assert executables._xla_options == {"xla_gpu_enable_pdl": True}
    assert executables._xla_options == {}
