"""benchmarks/decode_kernels.py's reading of XLA's optimized HLO: how many kernels one decode step launches, and
how many of them run outside command buffers (CUDA graphs), where each launch costs wall time that a profile
(which runs without command buffers) does not show."""

from __future__ import annotations

import pytest

from benchmarks.decode_kernels import step_kernels

# A decode loop whose body launches a norm fusion and a GEMM inside one command buffer, then a Mosaic GPU custom
# call on its own, then a second command buffer with a 4-trip inner loop of one fusion.
HLO = """
HloModule decode

%command_buffer (p0: f32[8]) -> f32[8] {
  %p0 = f32[8] parameter(0)
  %norm = f32[8] fusion(f32[8] %p0), kind=kCustom, calls=%norm_computation
  ROOT %gemm = f32[8] fusion(f32[8] %norm), kind=kCustom, calls=%gemm_computation
}

%inner_body (q: f32[8]) -> f32[8] {
  %q = f32[8] parameter(0)
  ROOT %add = f32[8] fusion(f32[8] %q), kind=kLoop, calls=%add_computation
}

%command_buffer.1 (p1: f32[8]) -> f32[8] {
  %p1 = f32[8] parameter(0)
  ROOT %inner = f32[8] while(f32[8] %p1), condition=%inner_cond, body=%inner_body, backend_config={"known_trip_count":{"n":"4"}}
}

%body (state: f32[8]) -> f32[8] {
  %state = f32[8] parameter(0)
  %graph = f32[8] call(f32[8] %state), to_apply=%command_buffer
  %down = f32[8] custom-call(f32[8] %graph), custom_call_target="mosaic_gpu_v2"
  ROOT %graph.1 = f32[8] call(f32[8] %down), to_apply=%command_buffer.1
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8] parameter(0)
  ROOT %loop = f32[8] while(f32[8] %x), condition=%cond, body=%body
}
"""


def test_a_step_counts_every_kernel_and_separately_those_outside_command_buffers():
    assert step_kernels(HLO) == {"fusion kCustom": 2, "custom-call mosaic_gpu_v2": 1, "fusion kLoop": 4}
    assert step_kernels(HLO, outside_graphs=True) == {"custom-call mosaic_gpu_v2": 1}


def test_a_loop_captured_whole_launches_nothing_on_its_own():
    captured = HLO.replace("""ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8] parameter(0)
  ROOT %loop = f32[8] while(f32[8] %x), condition=%cond, body=%body
}""", """%command_buffer.2 (y: f32[8]) -> f32[8] {
  %y = f32[8] parameter(0)
  ROOT %loop = f32[8] while(f32[8] %y), condition=%cond, body=%body
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8] parameter(0)
  ROOT %graph = f32[8] call(f32[8] %x), to_apply=%command_buffer.2
}""")
    assert sum(step_kernels(captured).values()) == 7
    assert step_kernels(captured, outside_graphs=True) == {}


def test_a_module_without_one_decode_loop_is_refused():
    with pytest.raises(RuntimeError, match="expected one decode loop"):
        step_kernels("ENTRY %main (x: f32[8]) -> f32[8] {\n  ROOT %x = f32[8] parameter(0)\n}\n")
