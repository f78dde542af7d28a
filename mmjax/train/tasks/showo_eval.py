"""Show-o evaluation: eval losses, T2I samples judged by pixel analysis, greedy MMU answers; seen vs unseen.

Metrics (final line of metrics.jsonl):
  t2i_loss / lm_loss / mmu_loss, t2i_masked_acc   teacher-forced, on `eval.loss_batches` bundles of the eval split
  t2i_match (t2i_colour, t2i_shape, t2i_found)    samples for the eval split's captions whose largest object has
                                                  the prompt's colour AND shape (`mmjax.eval.shapes_check`), when
                                                  the prompts are synthetic shapes
  mmu_accuracy                                    greedy answers to the eval split's questions, exact match after
                                                  VQA normalisation
  mmu_blind_accuracy                              what an image-blind guesser gets: the most frequent answer of
                                                  each question kind on the same questions (shapes)
With a shapes source that holds compositions out of training (`holdout_combos`, `holdout_questions`), each of
t2i_match and mmu_accuracy is also reported on the seen and the unseen compositions alone (`*_seen`, `*_unseen`,
with the counts `t2i_num_*`, `mmu_num_*`): a model that only memorised its training captions scores high on
the first and low on the second. Samples go to `workdir/samples/t2i_<step>.png` and `answers_<step>.jsonl`
(each answer with its `unseen` flag).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from mmjax import paths
from mmjax.models import showo as showo_model
from mmjax.models import showo_layout as layout
from mmjax.models import showo_vit_layout as vit_layout
from mmjax.train import sharding
from mmjax.train.tasks import showo_batches as sb
from mmjax.train.tasks.base import EvalContext


def evaluate(task: Any, params: Any, model_state: Any, ctx: EvalContext) -> dict[str, float]:
    """Eval losses, then T2I samples and MMU answers (see the module doc)."""
    ev, out = task.config.eval, {}
    if ev.loss_batches:
        sums: dict[str, float] = {}
        source = sb.BundleSource(len(task.batches("eval")))
        for i, batch in enumerate(ctx.batches(source, task.preprocess, limit=ev.loss_batches * ctx.batch_size)):
            batch.pop("valid")
            for k, val in task.eval_losses(params, model_state, batch, jax.random.key(ev.seed + i)).items():
                sums[k] = sums.get(k, 0.0) + float(val)
        for part in sb.PARTS:
            if f"{part}_nll" in sums:
                out[f"{part}_loss"] = sums[f"{part}_nll"] / max(sums[f"{part}_count"], 1.0)
        if "t2i_masked" in sums:
            out["t2i_masked_acc"] = sums["t2i_correct"] / max(sums["t2i_masked"], 1.0)
    samples = epath.Path(ctx.workdir, "samples")
    if ev.num_t2i and task.mix["t2i"]:
        out.update(eval_t2i(task, params, model_state, str(samples / f"t2i_{ctx.step}.png")))
    if ev.num_mmu and task.mix["mmu"]:
        out.update(eval_mmu(task, params, model_state, str(samples / f"answers_{ctx.step}.jsonl")))
    return out


def generate_images(task: Any, params: Any, model_state: Any, prompts: list[str], rng: jax.Array,
                    canvas: np.ndarray | None = None) -> np.ndarray:
    """uint8 images (len(prompts), H, W, 3) for the prompts, `eval.batch` at a time (fixed shapes)."""
    ev, b = task.config.eval, int(task.config.eval.batch)
    images = []
    for start in range(0, len(prompts), b):
        chunk = prompts[start:start + b]
        chunk = chunk + [chunk[-1]] * (b - len(chunk))
        text, lens = task.text_batch(chunk, task.s)
        init = showo_model.blank_canvas(b, task.n, task.vocab) if canvas is None else canvas[start:start + b]
        codes = showo_model.t2i_generate(task.model, params, text, lens, init, jax.random.fold_in(rng, start),
                                         max_text_len=task.s, num_steps=ev.t2i_steps,
                                         guidance_scale=float(ev.guidance_scale),
                                         generation_temperature=float(ev.generation_temperature),
                                         logit_temperature=float(ev.logit_temperature)).tokens
        images.append(task.decode_codes(model_state, codes)[: len(prompts) - start])
    return np.concatenate(images)


def _pad_rows(x: jax.Array, b: int) -> jax.Array:
    return jnp.concatenate([x, jnp.repeat(x[-1:], b - x.shape[0], 0)]) if x.shape[0] < b else x


def answer(task: Any, params: Any, model_state: Any, images: jax.Array, questions: list[str], *,
           top_k: int | None = None, temperature: float | None = None, rng: jax.Array | None = None) -> list[str]:
    """Answers to questions about images, `eval.batch` at a time. `images` are what the variant reads
    (`task.mmu_inputs`): codes (B, N) for discrete tokens, CLIP features (B, F, C) for the CLIP-ViT variant.
    Sampling: `top_k` / `temperature` (default: the run's `eval.mmu_top_k` / `eval.mmu_temperature`; 0 / 0 =
    greedy argmax). The reference's setting, top_k = 1 at temperature 1, keeps every token tied at the maximum
    and samples one of them uniformly (its `logits < kth` mask and `multinomial`); argmax takes the first."""
    b, answers = int(task.config.eval.batch), []
    clip = task.clip is not None
    if clip and images.ndim != 3:
        raise ValueError(f"this Show-o run is the CLIP-ViT variant: answer() takes CLIP features (B, F, C) from "
                         f"task.mmu_inputs, not image codes of shape {tuple(images.shape)}")
    question_text = vit_layout.mmu_vit_question_text if clip else layout.mmu_question_text
    texts = [question_text(q) for q in questions]
    width = max(len(task.text.encode(t)) for t in texts)
    max_new = int(task.config.eval.max_new_tokens)
    ev = task.config.eval
    top_k = int(ev.get("mmu_top_k", 0) if top_k is None else top_k)
    temperature = float(ev.get("mmu_temperature", 0.0) if temperature is None else temperature)
    rng = jax.random.key(int(ev.seed)) if rng is None else rng
    sampling = dict(max_new_tokens=max_new, temperature=temperature, top_k=top_k)
    for start in range(0, len(questions), b):
        rng, step_rng = jax.random.split(rng)
        chunk = texts[start:start + b]
        qids, qlen = task.text_batch(chunk + [chunk[-1]] * (b - len(chunk)), width)
        inputs = _pad_rows(jnp.asarray(images[start:start + b]), b)
        if clip:
            out = showo_model.mmu_vit_generate(task.model, params, inputs, task.system_ids, qids, qlen,
                                               rng=step_rng, **sampling)
        else:
            out = showo_model.mmu_generate(task.model, params, inputs, qids, qlen, rng=step_rng, **sampling)
        for row, n in zip(sharding.to_host(out.tokens)[: len(chunk)], sharding.to_host(out.lengths)):
            ids = [int(t) for t in row[:n] if t < task.vocab.text_vocab_size and t != task.vocab.eos_id]
            answers.append(task.text.decode(ids, skip_special_tokens=True).strip())
    return answers


def _split_scores(correct: Sequence[bool], unseen: Sequence[bool] | None, name: str, prefix: str
                  ) -> dict[str, float]:
    """{name}_seen / {name}_unseen (and the counts {prefix}_num_seen / _unseen) when records say which they are."""
    if unseen is None:
        return {}
    correct, unseen = np.asarray(correct, bool), np.asarray(unseen, bool)
    out = {f"{prefix}_num_seen": float((~unseen).sum()), f"{prefix}_num_unseen": float(unseen.sum())}
    for label, rows in (("seen", ~unseen), ("unseen", unseen)):
        if rows.any():
            out[f"{name}_{label}"] = float(correct[rows].mean())
    return out


def holds_out(source: Any) -> bool:
    """Whether an eval source marks its records as seen / unseen compositions (shapes with holdouts)."""
    from mmjax.data.shapes import ShapesSource

    cfg = getattr(source, "config", None)
    return isinstance(source, ShapesSource) and bool(cfg.holdout_combos or cfg.holdout_questions)


def eval_t2i(task: Any, params: Any, model_state: Any, grid_path: str) -> dict[str, float]:
    from mmjax.data.shapes import ShapesSource
    from mmjax.eval import geneval, shapes_check

    data = task.batches("eval")
    source = data.sources["t2i"]
    records = [source[i] for i in range(min(int(task.config.eval.num_t2i), len(source)))]
    prompts = [data.builder.caption("t2i", r) for r in records]
    images = generate_images(task, params, model_state, prompts, jax.random.key(task.config.eval.seed))
    grid_path = epath.Path(grid_path)  # the run may live in gs:// (docs/tpu.md)
    paths.make_dirs(grid_path.parent)
    with grid_path.open("wb") as f:
        geneval.save_png(geneval.image_grid(list(images), cols=8), f)
    if not isinstance(source, ShapesSource):
        return {}
    kw = dict(colours=source.config.colours, shapes=source.config.shapes)
    out = shapes_check.score_prompts(list(images), prompts, **kw)
    unseen = [bool(r["caption_unseen"]) for r in records] if holds_out(source) else None
    hits = [shapes_check.matches(im, *shapes_check.parse_prompt(p, **kw)[0], **kw) for im, p in zip(images, prompts)]
    return out | _split_scores(hits, unseen, "t2i_match", "t2i")


def eval_mmu(task: Any, params: Any, model_state: Any, answers_path: str) -> dict[str, float]:
    from mmjax.eval.vqa import normalize_vqa_answer

    source = task.batches("eval").sources["mmu"]
    records = [source[i] for i in range(min(int(task.config.eval.num_mmu), len(source)))]
    if not records or not {"question", "answer"} <= set(records[0]):
        return {}
    answers = answer(task, params, model_state, task.mmu_inputs(model_state, records),
                     [str(r["question"]) for r in records])
    rows = [{"index": i, "question": str(r["question"]), "answer": str(r["answer"]), "prediction": a,
             "correct": normalize_vqa_answer(a) == normalize_vqa_answer(str(r["answer"]))}
            for i, (r, a) in enumerate(zip(records, answers))]
    held_out = holds_out(source)
    for row, r in zip(rows, records):
        if held_out:
            row["unseen"] = bool(r["qa_unseen"])
    answers_path = epath.Path(answers_path)
    paths.make_dirs(answers_path.parent)
    with answers_path.open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    correct = [r["correct"] for r in rows]
    unseen = [r["unseen"] for r in rows] if held_out else None
    out = {"mmu_accuracy": float(np.mean(correct))} | _split_scores(correct, unseen, "mmu_accuracy", "mmu")
    if "question_kind" in records[0]:
        out["mmu_blind_accuracy"] = blind_accuracy([str(r["question_kind"]) for r in records],
                                                   [normalize_vqa_answer(str(r["answer"])) for r in records])
    return out


def blind_accuracy(kinds: Sequence[str], answers: Sequence[str]) -> float:
    """The image-blind baseline: the accuracy of answering every question with the most frequent answer of its
    kind on this very eval set (an oracle constant guesser, so a fair floor for "reads the image")."""
    best = 0
    for kind in set(kinds):
        values = [a for k, a in zip(kinds, answers) if k == kind]
        best += max(values.count(a) for a in set(values))
    return best / max(len(answers), 1)
