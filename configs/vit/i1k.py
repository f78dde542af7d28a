r"""ViT on ImageNet-1k from scratch: the "Better plain ViT baselines for ImageNet-1k" recipe (big_vision).

Command:   python -m mmjax.train --config configs/vit/i1k.py:variant=S/16,epochs=90 --workdir gs://.../vit_s16_i1k
Data:      tfds `imagenet2012` prepared as ArrayRecord (`tfds build imagenet2012 --file_format=array_record`,
           with the manually downloaded archives); `--config.data.train.data_dir=...` points at it.
Folder:    configs/vit/i1k.py:data=imagefolder,corpus=/data/imagenet/train,eval_corpus=/data/imagenet/val trains
           from ImageNet-style folders (`train/<class>/*.JPEG`; labels are the sorted class folders' indices, so
           val/ must hold the same 1,000 class folders). Any other labelled corpus: data=webdataset | parquet |
           jsonl | arrayrecord (docs/data.md).
Hardware:  a TPU v3-8 / 8 GPUs; the paper's S/16 90-epoch run took ~7h on TPUv3-8.
Recipe:    batch 1024, AdamW (b2=0.999) lr 1e-3, decoupled wd 1e-4 (optax scales wd by lr: 0.1 * 1e-3), 10k warmup,
           cosine,
           clip 1.0, sincos2d position embeddings, global average pooling, head zero-init, inception crop + flip,
           mixup 0.2, 224px, values in [-1, 1].
Expected:  paper top-1 on ImageNet val (S/16): 76.5% (90 ep), 78.5% (150 ep), 80.0% (300 ep). The paper also uses
           RandAugment(2, 10), which mmjax does not implement yet: expect about a point lower at 90 epochs.
Variants:  variant=B/16 (use mesh.fsdp for memory), epochs=300.
"""

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.data.sources import corpus_splits, label_options
from mmjax.train.defaults import trainer_config

TRAIN_EXAMPLES = 1_281_167


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, variant="S/16", epochs=90, batch_size=1024, data="tfds", corpus="", eval_corpus="")
    steps = arg.epochs * TRAIN_EXAMPLES // arg.batch_size
    c = trainer_config(task="classification", batch_size=arg.batch_size, total_steps=steps, log_every=100,
                       eval_every=5000, checkpoint_every=2000, data_workers=16)
    c.num_classes = 1000
    c.label_smoothing = 0.0
    c.augment = ml_collections.ConfigDict(dict(kind="inception_crop", max_shift=0, image_size=224,
                                               eval_resize=256, value_range=(-1.0, 1.0), mixup_alpha=0.2))
    c.data.train = ml_collections.ConfigDict(dict(name="tfds", dataset="imagenet2012", split="train[:99%]",
                                                  data_dir=None))
    if arg.data != "tfds":
        c.data.train, c.data.eval = corpus_splits(arg.data, arg.corpus, arg.eval_corpus, **label_options(arg.data))
    c.data.eval = ml_collections.ConfigDict(dict(name="tfds", dataset="imagenet2012", split="validation",
                                                 data_dir=None))
    if arg.data != "tfds":
        c.data.train, c.data.eval = corpus_splits(arg.data, arg.corpus, arg.eval_corpus, **label_options(arg.data))
    c.model = ml_collections.ConfigDict(dict(variant=arg.variant, pool_type="gap", posemb="sincos2d",
                                             dropout=0.0, scan=True, remat_policy="none", dtype="bfloat16"))
    c.optim.update(name="adamw", lr=1e-3, b2=0.999, weight_decay=0.1, warmup_steps=10_000, schedule="cosine",
                   clip_norm=1.0)
    return c
