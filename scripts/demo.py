"""`make demo`: the Show-o quick start on the embedded synthetic shapes, on this machine's CPU.

1. trains the tiny LFQ image tokenizer (32x32 shapes -> 4x4 tokens from 64 codes),
2. trains tiny Show-o on top of it (text-to-image, captions as text, questions about images),
3. its final evaluation generates images for the eval split's prompts (judged by pixel analysis: `t2i_match`) and
   answers its questions (`mmu_accuracy`), each also on the seen and on the unseen compositions alone: the
   config holds 4 colour x shape combinations and 6 question/scene combinations out of training
   (`t2i_match_seen` / `_unseen`, `mmu_accuracy_seen` / `_unseen`; `mmu_blind_accuracy` is what answering
   without looking at the image gets),
and writes OUT/results.json with those numbers (`scores`), the wall and CPU seconds, OUT/t2i_grid.png and
OUT/mmu_answers.jsonl. `--with-clip` also trains the Show-o-with-CLIP-ViT variant (configs/showo/tiny.py:clip=1)
on the same tokenizer; `--with-digits` the digits ViT (configs/vit/digits.py).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORES = ("t2i_match", "t2i_match_seen", "t2i_match_unseen", "mmu_accuracy", "mmu_accuracy_seen",
          "mmu_accuracy_unseen", "mmu_blind_accuracy")


def train(config_spec: str, workdir: str, *overrides: str) -> dict:
    from mmjax import configlib
    from mmjax.train.trainer import train as run

    config = configlib.apply_overrides(configlib.load_config_file(os.path.join(REPO, config_spec)), overrides)
    return run(config, workdir)


def newest(pattern: str) -> str | None:
    paths = sorted(glob.glob(pattern), key=os.path.getmtime)
    return paths[-1] if paths else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--with-clip", action="store_true")
    parser.add_argument("--with-digits", action="store_true")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    results: dict = {}

    tokenizer_dir = os.path.join(out, "tokenizer")
    tok = train("configs/vq/tiny.py:tokens=4,bits=6", tokenizer_dir)
    results["tokenizer"] = {k: tok[k] for k in ("psnr", "codebook_usage") if k in tok} | {"workdir": tokenizer_dir}
    print(f"[demo] tokenizer done in {time.time() - t0:.0f}s: {results['tokenizer']}", flush=True)

    showo_dir = os.path.join(out, "showo")
    final = train("configs/showo/tiny.py", showo_dir, f"tokenizer.workdir={tokenizer_dir}")
    results["showo"] = {k: v for k, v in final.items() if isinstance(v, int | float) and k not in ("step",)}
    results["showo"]["workdir"] = showo_dir
    results["scores"] = {k: final[k] for k in SCORES if k in final}
    print(f"[demo] Show-o done in {time.time() - t0:.0f}s: {results['scores']}", flush=True)
    grid = newest(os.path.join(showo_dir, "samples", "*.png"))
    answers = newest(os.path.join(showo_dir, "samples", "*.jsonl"))
    if grid:
        shutil.copy(grid, os.path.join(out, "t2i_grid.png"))
    if answers:
        shutil.copy(answers, os.path.join(out, "mmu_answers.jsonl"))

    if args.with_clip:
        clip_dir = os.path.join(out, "showo_clip")
        clip = train("configs/showo/tiny.py:clip=1", clip_dir, f"tokenizer.workdir={tokenizer_dir}")
        results["showo_clip"] = {k: clip[k] for k in SCORES if k in clip} | {"workdir": clip_dir}

    if args.with_digits:
        digits = train("configs/vit/digits.py", os.path.join(out, "digits"))
        results["digits_vit"] = {"test_accuracy": digits["accuracy"]}

    results["seconds"] = round(time.time() - t0, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results["cpu_seconds"] = {"user": round(usage.ru_utime, 1), "sys": round(usage.ru_stime, 1)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
