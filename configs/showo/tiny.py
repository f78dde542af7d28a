r"""Tiny Show-o on 32x32 synthetic shapes: text-to-image, captions as text, and questions about images, on a CPU.

Commands (the tokenizer first; Show-o reads its run through `tokenizer.workdir`):
    python -m mmjax.train --config configs/vq/tiny.py:tokens=4,bits=6 --workdir runs/vq_tiny4
    python -m mmjax.train --config configs/showo/tiny.py --workdir runs/showo_tiny \
        --config.tokenizer.workdir=runs/vq_tiny4
Variants:  configs/showo/tiny.py:steps=1500,width=128,layers=4
           configs/showo/tiny.py:clip=1   Show-o with CLIP-ViT: MMU reads a frozen random CLIP-style ViT's 16
                                          features (second-to-last layer) through mm_projector, the question in
                                          its phi1.5 prompt `USER: q ASSISTANT:`; T2I / LM rows unchanged
Corpus:    `corpus=GLOB_OR_FOLDER` trains on your image-caption corpus instead: `*.tar` webdataset shards,
           `*.parquet`, `*.jsonl`, `*.array_record` (records with `image` / `caption`, or `ids` written by
           `python -m mmjax.tokenize_images`) or an image folder (captions in `metadata.jsonl` or `.txt` sidecars).
           T2I and LM rows read its captions, MMU rows caption its images (`caption` format); evaluation reports
           losses only (the pixel-analysis scores need the shapes scenes). E.g.
           python -m mmjax.train --config 'configs/showo/tiny.py:corpus=/data/pets/*.tar' --workdir runs/showo_pets \
               --config.tokenizer.workdir=runs/vq_tiny4
           A glob whose folder names hold "," cannot be passed this way: use a `--config.data.train.*.source` override.
Data:      `shapes` single-object scenes ("a red circle"): T2I on the captions, the captions again as the text
           corpus (LM rows), and the scenes' single-word questions for MMU ("What color is the shape?"), asked in
           Show-o's inference format `<bos> USER: \n q ASSISTANT:` with the byte tokenizer (260 text ids; the
           10 Show-o specials, the tokenizer's codes and [MASK] follow: ShowoVocab). Train seed 0, eval seed 1.
           Held out of training (`holdout_split: seen`): the colour x shape pairs HOLDOUT_COMBOS and the question
           kinds about objects HOLDOUT_QUESTIONS; the eval split scores seen and unseen compositions apart.
Model:     a Phi-style block (parallel attention + MLP, partial RoPE, QK LayerNorm) of width 128, 3 layers; the image
           tokens are pre-tokenized once at start (`tokenizer.pretokenize`), the fastest path on a CPU. Rows per
           step: 8 T2I, 1 LM, 20 MMU (L = 52 + 16 + 3 = 71); 1,000 steps; loss 1.0 MTP + 0.1 LM + 2.0 MMU (the
           released configs use 1.0 for MMU: here the rare "yes" answers need the larger share of Adam's step).
Hardware:  2 shared CPU cores. Measured 2026-11-29 (load 2.3-5.3 from other jobs): tokenizer 9 min 26 s, this run
           7 min 23 s (2026-11-28 at a lighter effective load: 5 min 33 s and 4 min 03 s; docs/showo.md).
Expected:  final eval on seen compositions `t2i_match_seen` >= 0.8 (colour AND shape right by pixel analysis) and
           `mmu_accuracy_seen` >= 0.9 (exact match); measured 0.975 and 0.948; unseen 0.967 and 0.631; the
           image-blind guesser gets 0.434. clip=1: mmu_accuracy 0.910 (seen 0.979, unseen 0.708).
"""

import os

import ml_collections

from mmjax.configlib import ConfigError, parse_arg
from mmjax.models.showo_layout import SHOWO_SPECIAL_TOKENS
from mmjax.train.defaults import trainer_config

# Compositions never trained on (the eval scores them apart): one colour x shape pair per shape, and question
# kinds about objects that are otherwise seen (e.g. "What shape is it?" about a purple circle).
HOLDOUT_COMBOS = ("red triangle", "green diamond", "blue circle", "yellow square")
HOLDOUT_QUESTIONS = ("shape:purple circle", "color:white triangle", "shape:red square", "color:blue diamond",
                     "exists:green circle", "exists:yellow triangle")
# A CLIP-style tower (class token, quick GELU, ln_pre, ln_post on the pooled token only) small enough for a CPU:
# 8x8 patches of a 32x32 image = 16 features of width 64, read at its second-to-last layer.
TINY_TOWER = dict(width=64, depth=2, mlp_dim=256, num_heads=4, patch_size=[8, 8], act="quick_gelu",
                  patch_bias=False, cls_in_posemb=True, ln_pre=True, final_norm="pooled", ln_eps=1e-5,
                  pool_type="tok")


def shapes(seed: int, num_records: int, holdout_split: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="shapes", resolution=32, num_records=num_records, seed=seed,
                                          holdout_combos=HOLDOUT_COMBOS, holdout_questions=HOLDOUT_QUESTIONS,
                                          holdout_split=holdout_split))


def corpus_source(path: str) -> ml_collections.ConfigDict:
    """The source of a user corpus named by a glob (its extension picks the reader) or an image folder."""
    kinds = {".tar": "webdataset", ".parquet": "parquet", ".jsonl": "jsonl", ".array_record": "arrayrecord"}
    for ext, name in kinds.items():
        if path.endswith(ext):
            return ml_collections.ConfigDict(dict(name=name, pattern=path))
    if os.path.isdir(path):
        return ml_collections.ConfigDict(dict(name="imagefolder", root=path))
    raise ConfigError(f"corpus={path!r}: expected a glob ending in {', '.join(kinds)} or an image folder")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, steps=1000, width=128, layers=3, tokenizer="runs/vq_tiny4", records=4000, clip=False,
                    corpus="")
    c = trainer_config(task="showo", batch_size=1, total_steps=arg.steps, log_every=100,
                       checkpoint_every=arg.steps, eval_every=0)
    c.model = ml_collections.ConfigDict(dict(
        preset="tiny-phi", hidden_size=arg.width, num_layers=arg.layers, num_heads=arg.width // 32,
        mlp_dim=4 * arg.width, qk_norm="layernorm", scan_layers=False, w_clip_vit=arg.clip))
    if arg.clip:  # a random frozen tower: features are fixed random projections of the patches
        c.vision = ml_collections.ConfigDict(dict(tower=TINY_TOWER, image_size=32, hf="", seed=0))
    c.text = ml_collections.ConfigDict(dict(kind="byte", path="", bos="", eos=""))
    c.vocab = ml_collections.ConfigDict(dict(text_vocab_size=-1, bos_id=-1, eos_id=-1, codebook_size=0,
                                             special_tokens=SHOWO_SPECIAL_TOKENS))
    c.tokenizer = ml_collections.ConfigDict(dict(workdir=arg.tokenizer, converted="", model=ml_collections.ConfigDict(),
                                                 image_size=32, pretokenize=True))
    c.showo = ml_collections.ConfigDict(dict(
        max_text_len=52, mix=ml_collections.ConfigDict(dict(t2i=8, lm=1, mmu=20)),
        t2i_coeff=1.0, lm_coeff=0.1, mmu_coeff=2.0, cond_dropout_prob=0.1, min_masking_rate=0.0,
        mask_schedule="cosine", label_smoothing=0.0, system_prompt="", seq_multiple=1, loss_normalization="device"))
    part = lambda seed, n, split, **kw: ml_collections.ConfigDict(dict(source=shapes(seed, n, split), **kw))
    c.data.train = ml_collections.ConfigDict(dict(
        t2i=part(0, arg.records, "seen", text_field="caption"), lm=part(0, arg.records, "seen", text_field="caption"),
        mmu=part(0, arg.records, "seen", format="qa")))
    c.data.eval = ml_collections.ConfigDict(dict(
        t2i=part(1, 256, "all", text_field="caption"), lm=part(1, 256, "all", text_field="caption"),
        mmu=part(1, 256, "all", format="qa")))
    c.init = ml_collections.ConfigDict(dict(lm="", showo="", run=""))
    c.eval = ml_collections.ConfigDict(dict(num_t2i=192, num_mmu=256, t2i_steps=8, guidance_scale=2.0,
                                            generation_temperature=1.0, logit_temperature=1.0, max_new_tokens=10,
                                            loss_batches=2, batch=48, seed=0, mmu_top_k=0, mmu_temperature=0.0))
    if arg.corpus:
        for split in ("train", "eval"):
            part = lambda **kw: ml_collections.ConfigDict(dict(source=corpus_source(arg.corpus), **kw))
            c.data[split] = ml_collections.ConfigDict(dict(
                t2i=part(text_field="caption"), lm=part(text_field="caption"),
                mmu=part(format="caption", text_field="caption")))
        c.eval.update(num_t2i=0, num_mmu=0)
    c.optim.update(name="adamw", lr=1e-3, b1=0.9, b2=0.99, weight_decay=0.01, warmup_steps=100, schedule="cosine",
                   clip_norm=1.0)
    return c
