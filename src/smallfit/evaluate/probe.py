"""``python -m smallfit.evaluate.probe MODEL_DIR --texts-file F --config-json J``

Loads one saved model in this fresh process, measures it (see
:func:`smallfit.evaluate.speed.measure_loaded`) and prints the result as one line of JSON on
stdout. Thread pools are sized by the parent through OMP/MKL/OPENBLAS_NUM_THREADS before any
library loads. Exits non-zero with a message on stderr when something fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smallfit.evaluate.probe")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--texts-file", type=Path, required=True, help="JSON list of strings")
    parser.add_argument("--config-json", default="{}", help="an EvalConfig as JSON")
    args = parser.parse_args(argv)

    from smallfit.errors import SmallfitError
    from smallfit.evaluate.config import EvalConfig
    from smallfit.evaluate.speed import current_rss, measure_loaded
    from smallfit.models.loading import load_model

    try:
        config = EvalConfig.model_validate_json(args.config_json)
        texts = json.loads(args.texts_file.read_text(encoding="utf-8"))
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise SmallfitError(f"{args.texts_file}: expected a JSON list of strings")
        model = load_model(args.model_dir)
        load_rss = current_rss()
        result = measure_loaded(model, texts, config, load_rss_bytes=load_rss, isolated=True)
    except SmallfitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
