"""`make demo`: the quick start. Trains the digits ViT on this machine's CPU and writes its results.

Writes OUT/digits/ (config.json, metrics.jsonl, checkpoints, TensorBoard events) and OUT/results.json with the
final held-out metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_digits(out: str) -> dict:
    from mmjax import configlib
    from mmjax.train.trainer import train

    config = configlib.load_config_file(os.path.join(REPO, "configs/vit/digits.py"))
    return train(config, os.path.join(out, "digits"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    digits = run_digits(args.out)
    results = {"digits_vit": {"test_accuracy": digits["accuracy"], "workdir": os.path.join(args.out, "digits")},
               "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
