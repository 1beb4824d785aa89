"""Speed of the NPU cost model (``npuq cost``) against the op count: chains of 2,000 to 16,000 ops.

    python3 -m pytest benchmarks/test_cost_speed.py --benchmark-only

The cost model (validation and memory plan included) is linear in the op count: ``extra_info["us_per_op"]``
stays about the same from 2,000 to 16,000 ops. Its liveness used to be quadratic (8,000 ops took 17 s and
16,000 ops 80 s). tests/npu/test_program_hardening.py checks the linearity by counting executed lines.
"""

import pytest

SIZES = (2_000, 8_000, 16_000)


def _chain(n: int):
    from npuq.npu.program import InputSpec, Op, Program

    pool = dict(kernel=[1, 1], stride=[1, 1], padding=[0, 0, 0, 0])
    ops = [
        Op(name=f"p{i}", kind="max_pool2d", inputs=["x" if i == 0 else f"p{i - 1}"], attrs=dict(pool), scale=0.1)
        for i in range(n)
    ]
    return Program(
        input=InputSpec(name="x", shape=(4, 4, 8), scale=0.5, zero_point=0),
        ops=ops,
        output=f"p{n - 1}",
        model=f"chain{n}",
    )


@pytest.mark.parametrize("n", SIZES, ids=[f"ops{n}" for n in SIZES])
def test_cost_speed(benchmark, npuq_module, n):
    from npuq.npu.cost import estimate_cost

    program = _chain(n)
    benchmark.group = "npuq cost"
    report = benchmark.pedantic(estimate_cost, args=(program,), rounds=3, iterations=1)
    assert len(report.ops) == n
    benchmark.extra_info["us_per_op"] = benchmark.stats.stats.median / n * 1e6
