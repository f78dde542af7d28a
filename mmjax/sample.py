"""`python -m mmjax.sample`: images and answers from a trained Show-o run.

    python -m mmjax.sample --workdir RUN --task t2i --prompt "a red circle" --num 4 --out OUT
    python -m mmjax.sample --workdir RUN --task mmu --image FILE --question "What color is the shape?" --out OUT
    python -m mmjax.sample --workdir RUN --task inpaint --image FILE --mask MASK.png --prompt "a blue square" --out OUT
    python -m mmjax.sample --workdir RUN --task extrapolate --image FILE --direction right --prompt "..." --out OUT

Sampling settings default to the reference's demo commands (its README), not the run's eval settings:
T2I 50 MaskGIT steps at guidance 5 (its 512 px demo; its 256 px demo config names none, so the same), inpainting
and extrapolation 16 steps at guidance 1.75, generation temperature 1 and plain softmax (logit temperature 1);
MMU answers sampled with top_k = 1 at temperature 1, i.e. the most likely token, a random one of several tied
maxima (`inference_mmu.py`). Every setting has a flag. GenEval's instructions name no setting: use the demo's
(`--steps 50 --guidance 5`) and say so with the scores.

The task is rebuilt from RUN/config.json and the weights come from RUN's newest checkpoint (EMA params when the
run kept them); the frozen image tokenizer comes from the same checkpoint's `model_state`, so a run directory is
all that is needed. Images go to OUT/sample_<i>.png plus OUT/grid.png; answers are printed and written to
OUT/answers.jsonl. Inpainting masks are images whose white (> 0.5) pixels are repainted; they are resized to the
token grid the way the reference does (bicubic, threshold 0.5). RUN may be relative. Errors in the arguments, the
run or the input files are one `error:` line with exit status 2 (`--debug` for the traceback; see `mmjax.cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import cli

TASKS = ("t2i", "mmu", "inpaint", "extrapolate")
# The reference's demo settings (README): (MaskGIT steps, guidance scale) per task.
DEMO_SETTINGS = {"t2i": (50, 5.0), "inpaint": (16, 1.75), "extrapolate": (16, 1.75)}
MMU_TOP_K, MMU_TEMPERATURE = 1, 1.0   # inference_mmu.py: top_k = 1, multinomial sampling at temperature 1


def load_run(workdir: str) -> tuple[Any, Any, Any]:
    """(ShowoTask, params, model_state) of a run directory."""
    from mmjax.configlib import ConfigError
    from mmjax.train.checkpoint import load_params
    from mmjax.train.tasks import make_task

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} has no config.json: not a training run directory")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.task != "showo":
        raise ConfigError(f"{workdir} is a {config.task!r} run; mmjax.sample serves Show-o runs")
    task = make_task(config)
    params = load_params(workdir, key="ema_params" if config.get("ema_decay") else "params")
    return task, params, load_params(workdir, key="model_state")


def read_image(path: str, size: int) -> np.ndarray:
    """An image file -> float32 (size, size, 3) in [-1, 1], resized and centre-cropped like training data."""
    from mmjax.train.tasks.showo_examples import load_image

    with open(path, "rb") as f:
        return load_image(f.read(), size, path)


def _prompts(task: Any, prompt: str, num: int) -> tuple[np.ndarray, np.ndarray]:
    return task.text_batch([prompt] * num, task.s)


def _decode_and_save(task: Any, model_state: Any, codes: Any, out: str) -> list[str]:
    """Codes (B, N) or grids (B, h, w) (extrapolated grids are not square) -> OUT/sample_<i>.png + grid.png."""
    from mmjax.eval import geneval
    from mmjax.models.vq import decode_ids

    codes = jnp.asarray(codes)
    if codes.ndim == 3:
        pixels = decode_ids(task.vq_model, model_state["tokenizer"], codes)
        images = np.asarray(jnp.round((pixels + 1.0) * 127.5).clip(0, 255)).astype(np.uint8)
    else:
        images = task.decode_codes(model_state, codes)
    paths = []
    for i, image in enumerate(images):
        paths.append(os.path.join(out, f"sample_{i}.png"))
        geneval.save_png(image, paths[-1])
    geneval.save_png(geneval.image_grid(list(images)), os.path.join(out, "grid.png"))
    return paths


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mmjax.models import showo as showo_model
    from mmjax.models.showo_layout import inpainting_token_mask

    task, params, model_state = load_run(args.workdir)
    os.makedirs(args.out, exist_ok=True)
    rng = jax.random.key(args.seed)
    steps, guidance = DEMO_SETTINGS.get(args.task, (0, 0.0))
    kw = dict(max_text_len=task.s, num_steps=args.steps or steps,
              guidance_scale=guidance if args.guidance is None else args.guidance,
              generation_temperature=args.generation_temperature, logit_temperature=args.logit_temperature)
    if args.task == "t2i":
        text, lens = _prompts(task, args.prompt, args.num)
        canvas = showo_model.blank_canvas(args.num, task.n, task.vocab)
        codes = showo_model.t2i_generate(task.model, params, text, lens, canvas, rng, **kw).tokens
        return {"images": _decode_and_save(task, model_state, codes, args.out)}
    image = read_image(args.image, task.image_size)
    codes = task.encode_images(model_state, image[None])
    if args.task == "mmu":
        answer = task.answer(params, model_state, codes, [args.question], top_k=args.top_k,
                             temperature=args.temperature, rng=rng)[0]
        with open(os.path.join(args.out, "answers.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"image": args.image, "question": args.question, "answer": answer}) + "\n")
        print(answer)
        return {"answer": answer}
    codes = jnp.repeat(codes, args.num, axis=0)
    text, lens = _prompts(task, args.prompt, args.num)
    if args.task == "inpaint":
        mask = (read_image(args.mask, task.image_size)[..., 0] + 1.0) / 2.0
        token_mask = jnp.repeat(inpainting_token_mask(jnp.asarray(mask)[None], task.grid), args.num, axis=0)
        new = showo_model.inpaint(task.model, params, text, lens, codes, token_mask, rng, **kw)
        return {"images": _decode_and_save(task, model_state, new, args.out)}
    grid = codes.reshape(args.num, task.grid, task.grid)
    new = showo_model.extrapolate(task.model, params, text, lens, grid, args.direction, rng, offset=args.offset, **kw)
    return {"images": _decode_and_save(task, model_state, new, args.out)}


def parse(argv: list[str]) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m mmjax.sample", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a Show-o training run directory")
    p.add_argument("--task", choices=TASKS, default="t2i")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--prompt", default="", help="caption for t2i / inpaint / extrapolate")
    p.add_argument("--num", type=cli.int_at_least(1), default=4, help="images to generate")
    p.add_argument("--image", default="", help="input image (mmu, inpaint, extrapolate)")
    p.add_argument("--mask", default="", help="inpainting mask image, white = repaint")
    p.add_argument("--question", default="", help="question for --task mmu")
    p.add_argument("--direction", default="right", choices=("left", "right", "up", "down"))
    p.add_argument("--offset", type=cli.int_at_least(0), default=0, help="extrapolation: extra new grid lines")
    p.add_argument("--steps", type=cli.int_at_least(0), default=0,
                   help="MaskGIT steps (default: the reference demo's, 50 for t2i, 16 for inpaint / extrapolate)")
    p.add_argument("--guidance", type=float, default=None,
                   help="CFG scale (default: the reference demo's, 5 for t2i, 1.75 for inpaint / extrapolate)")
    p.add_argument("--generation-temperature", type=float, default=1.0,
                   help="Show-o's generation_temperature: Gumbel noise on the confidences that pick which tokens "
                        "stay, annealed (default 1, the reference's)")
    p.add_argument("--logit-temperature", type=float, default=1.0,
                   help="divides the code logits before sampling; 1 = plain softmax as the reference, 0 = argmax")
    p.add_argument("--top-k", type=cli.int_at_least(0), default=MMU_TOP_K,
                   help="MMU: sample among the k most likely tokens (ties at the k-th kept; default 1, the "
                        "reference's); 0 = all")
    p.add_argument("--temperature", type=float, default=MMU_TEMPERATURE,
                   help="MMU: sampling temperature (default 1, the reference's); 0 = greedy argmax (first maximum)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.task in ("t2i", "inpaint", "extrapolate") and not args.prompt:
        p.error(f"--task {args.task} needs --prompt")
    if args.task == "mmu" and not args.question:
        p.error("--task mmu needs --question")
    if args.task != "t2i" and not args.image:
        p.error(f"--task {args.task} needs --image")
    if args.task == "inpaint" and not args.mask:
        p.error("--task inpaint needs --mask (white = repaint)")
    return args


def _sample(args: argparse.Namespace) -> int:
    result = run(args)
    if "images" in result:
        print("\n".join(result["images"]))
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse(sys.argv[1:] if argv is None else argv)
    return cli.run_main(lambda: _sample(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
