"""Issue 3: int8 float fallback on the known trap, the mpnet-base teacher (MODELS.md: per-tensor
int8 breaks mpnet's FFN). Per-tensor int8 without and with the fallback, and per-channel int8,
each against the float ONNX model on the user's dev texts (checked) and on test texts (held out).

    .venv/bin/python benchmarks/int8_fallback_mpnet.py --run-dir runs/banking77

Needs a finished demo run. Takes about 15 minutes on 2 cores (each of 73 probes quantizes a
437 MB graph). Writes ``benchmarks/results/int8_fallback_mpnet.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _report import save_and_report

from smallfit.compress import OnnxExport, OrtDynamicInt8, compress
from smallfit.data import load_dataset
from smallfit.demo import demo_config
from smallfit.errors import SmallfitError
from smallfit.evaluate import environment
from smallfit.models import load

HERE = Path(__file__).resolve().parent
TARGETS = {"fallback_test_agreement_min": 0.97}
VARIANTS = {
    "per-tensor": OrtDynamicInt8(per_channel=False, fallback=False, min_agreement=0.0),
    "per-tensor + fallback": OrtDynamicInt8(per_channel=False, min_agreement=0.97),
    "per-channel": OrtDynamicInt8(min_agreement=0.0),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared/data/banking77")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--test-texts", type=int, default=1000)
    args = parser.parse_args()

    data = load_dataset(demo_config(args.data, run_dir=args.run_dir).data)
    check, test = data.dev.texts[:512], data.test.texts[: args.test_texts]
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="smallfit-mpnet-") as tmp:
        float_dir = Path(tmp) / "float"
        compress(
            args.run_dir / "models" / "teacher", [OnnxExport()], out_dir=float_dir,
            check_texts=check[:64],
        )  # fmt: skip
        reference = load(float_dir).predict_proba(test).argmax(1)
        for name, step in VARIANTS.items():
            started = time.monotonic()
            out = Path(tmp) / name.replace(" ", "").replace("+", "_")
            try:
                model = compress(float_dir, [step], out_dir=out, check_texts=check)
            except SmallfitError as exc:
                figures[name] = {"error": str(exc)}
                continue
            metrics = model.lineage["compression"][-1]["metrics"]
            agreement = float((model.predict_proba(test).argmax(1) == reference).mean())
            figures[name] = {
                "check_agreement": metrics["argmax_agreement"],
                "test_agreement_with_float": agreement,
                "float_nodes": metrics.get("float_nodes", []),
                "quantization": model.quantization,
                "bytes_on_disk": model.info.bytes_on_disk,
                "seconds": round(time.monotonic() - started, 1),
            }
            print(name, figures[name], flush=True)
    fallback = figures["per-tensor + fallback"]
    plain = figures["per-tensor"]
    checks = {
        "fallback_test_agreement": fallback.get("test_agreement_with_float", 0)
        >= TARGETS["fallback_test_agreement_min"],
        "fallback_beats_plain_per_tensor": fallback.get("test_agreement_with_float", 0)
        > plain.get("test_agreement_with_float", 1),
    }
    record = {
        "benchmark": "int8_fallback_mpnet",
        "command": " ".join(["python", "benchmarks/int8_fallback_mpnet.py", *sys.argv[1:]]),
        "targets": TARGETS,
        "figures": figures,
        "passed": checks,
        "check_texts": len(check),
        "test_texts": len(test),
        "environment": environment(),
    }
    save_and_report(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
