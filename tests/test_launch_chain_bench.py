"""benchmarks/launch_chain_bench.py, the probe of whether XLA launches Pallas kernels with programmatic dependent
launch: every chain computes what it should (a kernel that read its input too early would not), its PDL kernels
carry the griddepcontrol instructions in their GPU lowering, and the plain ones do not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from benchmarks import launch_chain_bench as bench


def test_on_cpu_every_plain_chain_runs_checked_and_timed(tmp_path):
    results = bench.main(["--lengths", "2", "5", "--width", "256", "--out", str(tmp_path / "chain.json")])
    assert set(results) == {f"{kind}/default" for kind in ("xla", "triton", "mosaic", "xla_triton", "xla_mosaic")}
    for result in results.values():
        assert "error" not in result, result
        assert set(result["chain_us"]) == {"2", "5"} and all(t > 0 for t in result["chain_us"].values())
    assert (tmp_path / "chain.json").exists()


@pytest.mark.parametrize("kind", ["triton", "mosaic"])
def test_only_the_pdl_kernels_wait_for_their_predecessor(kind):
    x = jax.ShapeDtypeStruct((1024,), jnp.float32)

    def gpu_lowering(kind):
        return bench.chain(bench.step_of(kind, interpret=False), 2).trace(x).lower(
            lowering_platforms=("cuda",)).as_text()

    assert "griddepcontrol.wait" not in gpu_lowering(kind)
    assert gpu_lowering(f"{kind}_pdl").count("griddepcontrol.wait") >= 2  # one per kernel of the chain


def test_a_chain_that_computes_the_wrong_thing_is_refused(monkeypatch):
    monkeypatch.setattr(bench, "xla_step", lambda x: jax.lax.optimization_barrier(x + 2.0))
    with pytest.raises(AssertionError, match=r"xla chain of 1: max \|error\|"):
        bench.measure("xla", {}, (1, 2), 128, interpret=True)
