"""The coverage table: every CNN of torchvision on this CPU, explained or not, and at what cost.

    python tests/coverage_table.py                       # every CNN the coverage test builds
    python tests/coverage_table.py densenet121 alexnet   # some of them

Each model is built as ``tests/test_coverage.py`` builds it (random weights and BN scales, zero
biases and BN shifts), explained with epsilon-plus-flat at that test's small input (finite, not
all zero, the map's sum against the explained logit), then timed at 224x224, batch 1, fp32, one
thread, beside the floor (forward plus input gradient) by ``rtlrp bench``'s ``bench_model``. The
reference column names the family test that checks the model's family against its reference
(README, "Supported models"; ``pytest -s`` prints the errors). It prints one markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from test_coverage import CNNS, NOT_CONSERVED, _params, build, inputs  # noqa: E402

from realtime_lrp import LRP  # noqa: E402
from realtime_lrp.apps.bench import BenchConfig, bench_model, imagenet_card  # noqa: E402

REFERENCES = {  # name prefix: the test of its family against its reference
    "alexnet": "test_architectures[alexnet] (zennit)", "vgg": "test_engine (zennit; small VGGs, vgg11_bn)",
    "resnet": "test_architectures[resnet18/34/50] (zennit, ResNetCanonizer)",
    "resnext": "test_architectures[resnext_32x4d_small] (zennit)",
    "wide_resnet": "test_architectures[wide_resnet_small] (zennit)",
    "mobilenet_v2": "test_cnn_act[mobilenet_v2]", "mobilenet_v3": "test_cnn_act[mobilenet_v3_small/large]",
    "efficientnet_v2": "test_cnn_act[efficientnet_v2_s]", "efficientnet_b": "test_cnn_act[efficientnet_b0]",
    "mnasnet": "test_cnn_act[mnasnet0_5]", "regnet_x": "test_cnn_act[regnet_x_400mf]",
    "regnet_y": "test_cnn_act[regnet_y_400mf]", "squeezenet": "test_cnn_index[squeezenet1_0/1_1]",
    "shufflenet": "test_cnn_index[shufflenet_v2_x0_5]", "googlenet": "test_cnn_index[googlenet]",
    "inception": "test_cnn_index[inception_v3]", "densenet": "test_cnn_index[densenet121]",
    "convnext": "test_convnext (LXT)",
}


def reference(name: str) -> str:
    return next((test for prefix, test in sorted(REFERENCES.items(), key=lambda kv: -len(kv[0]))
                 if name.startswith(prefix)), "none")


def row(name: str, repeats: int) -> str:
    """One table row for ``name``: a refusal is a row, not a crash."""
    start = time.monotonic()
    params = f"{_params(name) / 1e6:.1f}"
    try:
        model, x = build(name), inputs(name)
        result = LRP(model, preset="epsilon-plus-flat")(x)
    except Exception as exc:  # noqa: BLE001 - the refusal is what the table reports
        return f"| {name} | {params} | no: {str(exc).splitlines()[0][:120]} | - | - | - | - |"
    finite = bool(torch.isfinite(result.relevance).all()) and float(result.relevance.abs().max()) > 0
    logit = result.logits.gather(1, result.target.view(-1, 1)).squeeze(1)
    gap = float(((result.relevance.sum((1, 2)) - logit).abs() / logit.abs()).max())
    conserved = "not conserved by its rules" if name.startswith(tuple(NOT_CONSERVED)) else f"{gap:.1e}"
    config = BenchConfig(sizes=(224,), top_ks=(0.0,), zennit=False, frame_pass=False, autolrp=False, lxt=False,
                         repeats=repeats, warmup=1)
    bench = bench_model(model, imagenet_card(224, 10), config)[0]
    print(f"  {name}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return (f"| {name} | {params} | {'yes' if finite else 'NOT FINITE'} | {conserved} | {reference(name)} "
            f"| {bench['engine_ms']:.0f} / {bench['floor_ms']:.0f} | {bench['engine_over_floor']:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="models (default: every CNN of the coverage test)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per model (median)")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in CNNS]
    if unknown:
        parser.error(f"not a CNN of the coverage test: {unknown[0]}")
    torch.set_num_threads(1)
    print(f"Coverage, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, 1 thread")
    print("\n| model | M params | explained | abs(sum - logit) / logit | reference | engine / floor ms (224, b1) "
          "| engine/floor |\n|---|---|---|---|---|---|---|")
    for name in args.names or CNNS:
        print(row(name, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
