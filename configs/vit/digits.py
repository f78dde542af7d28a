r"""ViT on sklearn's handwritten digits (8x8, 10 classes): the foundation's end-to-end check, on a laptop CPU.

Command:   python -m mmjax.train --config configs/vit/digits.py --workdir runs/digits
Variants:  configs/vit/digits.py:variant=Ti/2,steps=3000
Your data: configs/vit/digits.py:data=imagefolder,corpus=/data/train,eval_corpus=/data/val,classes=37,size=32
           any labelled image corpus (data=imagefolder: one sub-folder per class; webdataset: `.cls` members;
           parquet: a `label` column; jsonl: `image` paths and `label`; arrayrecord: `image` and `label` fields),
           RGB at size x size px with inception crops; eval_corpus defaults to the training corpus.
Hardware:  2 CPU cores, about 2 minutes (Mu/2, 1200 steps of batch 128).
Expected:  >= 97% top-1 on the 360 held-out test digits (fixed 80/20 split, seed 0); see docs/results.md.
"""

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.data.sources import corpus_splits, label_options
from mmjax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, variant="Mu/2", steps=1200, data="digits", corpus="", eval_corpus="", classes=10, size=32)
    c = trainer_config(task="classification", batch_size=128, total_steps=arg.steps, log_every=100,
                       checkpoint_every=500, eval_every=500)
    c.num_classes = 10
    c.label_smoothing = 0.1
    c.augment = ml_collections.ConfigDict(dict(kind="shift", max_shift=1, image_size=8, eval_resize=8,
                                                 value_range=(0.0, 1.0), mixup_alpha=0.0, channels=1))
    c.data.train = ml_collections.ConfigDict(dict(name="digits", split="train"))
    c.data.eval = ml_collections.ConfigDict(dict(name="digits", split="test"))
    if arg.data != "digits":
        c.num_classes = arg.classes
        c.augment.update(kind="inception_crop", image_size=arg.size, eval_resize=arg.size * 8 // 7, channels=3)
        c.data.train, c.data.eval = corpus_splits(arg.data, arg.corpus, arg.eval_corpus, **label_options(arg.data))
    c.model = ml_collections.ConfigDict(dict(variant=arg.variant, pool_type="gap", posemb="learned",
                                             dropout=0.0, scan=False, remat_policy="none"))
    c.optim.update(name="adamw", lr=3e-3, weight_decay=0.05, warmup_steps=100, schedule="cosine", clip_norm=1.0)
    return c
