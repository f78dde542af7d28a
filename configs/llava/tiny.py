r"""Tiny LLaVA on synthetic shapes (byte tokenizer, micro CLIP-style ViT, micro LLaMA): both stages on a CPU.

Commands:  python -m mmjax.train --config configs/llava/tiny.py:stage=1 --workdir runs/llava_tiny/s1
           python -m mmjax.train --config configs/llava/tiny.py:stage=2 --workdir runs/llava_tiny/s2 \
               --config.init.workdir=runs/llava_tiny/s1
Stage 1 (alignment): captions ("a red circle") with the `plain` template; only the projector learns (the
vision tower and LM are frozen). Stage 2 (instruction tuning) starts from stage 1's checkpoint (through
`pretrained_variables`) and answers questions ("What color is the shape?", "Is there a blue square?") with the
`chatml` template; projector and LM learn, and, because this tower is random rather than CLIP-pretrained, the
tower too at half the learning rate (`optim.lr_mult`, the LLaVA-NeXT way).
Your data: configs/llava/tiny.py:stage=1,data=webdataset,corpus=/data/shards/*.tar   (image-caption corpora:
           data=webdataset | parquet | imagefolder | jsonl | arrayrecord, captions as stage 1 trains them);
           configs/llava/tiny.py:data=llava_json,corpus=/data/chat.json,images=/data/images   (LLaVA conversations,
           either stage); eval_corpus= a held-out one, else the training corpus's first 300 records.
Hardware:  2 CPU cores, a few minutes for both stages (docs/llava.md has the measured times).
Expected:  stage 2 `vqa_accuracy` >= 0.90 on 300 held-out scenes/questions (exact match of greedy answers).
"""

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.data.sources import corpus_splits
from mmjax.train.tasks.llava import base_config, warmup


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, stage=2, steps=0, init="", data="shapes", corpus="", eval_corpus="", images="")
    stage = arg.stage
    steps = arg.steps or (300 if stage == 1 else 600)
    c = base_config(stage, batch_size=32, total_steps=steps, log_every=50, checkpoint_every=steps, eval_every=0)
    c.model.update(vision=dict(preset="clip", width=64, depth=3, mlp_dim=128, num_heads=4, patch_size=8),
                   lm=dict(preset="tiny-llama", vocab_size=0, hidden_size=128, num_layers=2, num_heads=4,
                           num_kv_heads=2, mlp_dim=256, max_len=128, scan_layers=False))
    c.image.update(mode="pad", size=32, patch_size=8)  # 32px scenes -> 4x4 = 16 image tokens
    # Both stages must build the same vocabulary: the chat tokens exist in stage 1 too.
    c.text.update(special_tokens=("<|im_start|>", "<|im_end|>"), template="plain" if stage == 1 else "chatml",
                  max_len=48 if stage == 1 else 128, image_first=False)
    c.data.train = ml_collections.ConfigDict(dict(name="shapes", num_records=50_000, seed=0, resolution=32))
    c.data.eval = ml_collections.ConfigDict(dict(name="shapes", num_records=300, seed=1, resolution=32))
    if arg.data != "shapes":
        images = {"images": arg.images} if arg.images else {}
        c.data.train, c.data.eval = corpus_splits(arg.data, arg.corpus, arg.eval_corpus, **images)
    c.eval.update(num_examples=300, max_new_tokens=12)
    c.eval_batch_size = 100
    c.init.workdir = arg.init
    c.optim.update(lr=1e-3 if stage == 1 else 2e-3, warmup_steps=warmup(steps), clip_norm=1.0)
    if stage == 2:
        c.optim.update(frozen=(), lr_mult={r"^vision_tower/": 0.5})
    return c
