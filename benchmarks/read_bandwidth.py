"""How fast this GPU reads HBM, by several access patterns and three clocks (issue 2's HBM limit).

    python benchmarks/read_bandwidth.py [--gib 4]

The decode benchmark divides the bytes a token needs by a *measured* read bandwidth, so its ratio is only as
honest as that measurement: a pattern or a clock that reads slowly makes every ratio look better. Each pattern
of ``common.read_patterns`` reads every byte of a ``--gib`` GiB bf16 array once. Clocks: host wall time of
each call blocked on (what the decode benchmark used before), back-to-back dispatches (what
``common.measured_read_bandwidth`` uses now) and the device's busy time (JAX's profiler).
"""

from __future__ import annotations

import argparse
import sys

import jax

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402
from benchmarks.matvec_bench import device_busy_s  # noqa: E402

CLOCKS = {
    "host, each call blocked": lambda fn: common.time_fn(fn, repeats=20),
    "host, back to back": lambda fn: common.time_back_to_back(fn, repeats=10),
    "device busy": lambda fn: min(device_busy_s(fn) for _ in range(3)) or float("nan"),  # nan: no device events
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--width", type=int, default=8192, help="the array's minor dimension (the product's K)")
    args = parser.parse_args()
    array = common.read_array(int(args.gib * (1 << 30)), args.width)
    results = {"device": jax.devices()[0].device_kind, "bytes": array.nbytes, "TBps": {}}
    print(f"{results['device']}: {array.nbytes / 2**30:.2f} GiB read per call", flush=True)
    for clock_name, clock in CLOCKS.items():
        rates = common.read_bandwidth_by_pattern(array, clock)
        for pattern, rate in rates.items():
            results["TBps"].setdefault(pattern, {})[clock_name] = rate / 1e12
            print(f"{pattern}, {clock_name}: {rate / 1e12:.3f} TB/s", flush=True)
    common.write_results("read_bandwidth.json", results)
    print("\n| pattern | " + " | ".join(CLOCKS) + " |\n|---|" + "---|" * len(CLOCKS))
    for pattern, by_clock in results["TBps"].items():
        print(f"| {pattern} | " + " | ".join(f"{by_clock.get(c, float('nan')):.3f}" for c in CLOCKS) + " |")


if __name__ == "__main__":
    main()
