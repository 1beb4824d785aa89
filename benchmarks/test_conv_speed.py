"""Speed of one int8 convolution per MobileNetV2 layer: npuq vs torch fbgemm int8 vs torch float32.

Run explicitly (not collected by the default test run):

    python3 -m pytest benchmarks/ --benchmark-only
    python3 -m pytest benchmarks/ --benchmark-only -k "b1 and dw"          # a subset
    python3 -m pytest benchmarks/ --benchmark-only --benchmark-group-by=group --benchmark-sort=name

Test ids are ``[<layer id>-b<batch>-<implementation>]``; each (layer, batch) is its own benchmark
group, so pytest-benchmark's table compares the three implementations of one layer side by side.
``extra_info`` carries the layer's MACs and the GMAC/s of the median time. See conv_cases.py for what
exactly each implementation runs; benchmarks/bench_conv.py prints the same comparison as one table.
"""

import conv_cases
import numpy as np
import pytest
from mobilenetv2_layers import unique_layers

LAYERS = unique_layers()
BATCHES = (1, 8)


@pytest.mark.benchmark(warmup=True, warmup_iterations=20)
@pytest.mark.parametrize("impl", conv_cases.IMPLEMENTATIONS)
@pytest.mark.parametrize("batch", BATCHES, ids=[f"b{b}" for b in BATCHES])
@pytest.mark.parametrize("layer", LAYERS, ids=[l.id for l in LAYERS])
def test_conv_speed(benchmark, request, layer, batch, impl, bench_threads):
    npuq = request.getfixturevalue("npuq_module") if impl == "npuq" else None
    data = conv_cases.make_conv_data(layer, batch)
    fn = conv_cases.build(impl, data, npuq)

    out = fn()  # also checks that it runs before timing
    expected = layer.output_shape_nhwc(batch)
    if impl == "npuq":
        assert np.shape(out) == expected
        assert np.asarray(out).dtype == np.int8
    else:
        n, h, w, c = expected
        assert tuple(out.shape) == (n, c, h, w)

    benchmark.group = f"{layer.id}-b{batch}"
    benchmark.extra_info.update(
        layer=layer.id,
        kind=layer.kind,
        shape=layer.shape_str(),
        batch=batch,
        impl=impl,
        macs=data.macs,
        count_in_network=layer.count,
        threads=bench_threads,
    )
    benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None) if stats is not None else None
    if median:
        benchmark.extra_info["gmacs_median"] = data.macs / median / 1e9
