r"""A tiny LLaMA-style LM pre-trained on packed synthetic shape captions: the LM task's end-to-end check on CPU.

Command:   python -m mmjax.train --config configs/lm/tiny.py --workdir runs/lm_tiny
Variants:  configs/lm/tiny.py:steps=150,preset=tiny-phi
Your data: configs/lm/tiny.py:data=jsonl,corpus=/data/text/*.jsonl   (or data=parquet | arrayrecord; the text is
           the `text` field / column: --config.data.train.text_field=content; eval_corpus= a held-out one, else
           the first 64 groups of the training corpus)
Hardware:  2 CPU cores, about a minute (see docs/lm.md for the measured wall time).
Data:      captions of `mmjax.data.shapes` scenes (1-3 objects with positions, e.g. "a red circle at the top left
           and a blue square at the center"), byte tokenizer with bos/eos: 8 captions per group packed into
           6 rows of 128 slots; eval = 1000 captions of held-out scenes (another seed).
Expected:  final eval loss far below the corpus' unigram entropy (both in nats/token, both in metrics.jsonl:
           `loss` vs `unigram_entropy`); docs/lm.md has the measured numbers.
"""

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.data.sources import corpus_splits
from mmjax.train.defaults import trainer_config
from mmjax.train.tasks.lm import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, steps=150, preset="tiny-llama", data="shapes_captions", corpus="", eval_corpus="")
    c = trainer_config(task="lm", batch_size=4, total_steps=arg.steps, log_every=25, eval_every=0,
                       checkpoint_every=1000)
    c.update(default_config())
    c.packing.update(seq_len=256, rows=4, docs_per_group=12)
    c.evaluation.update(groups=0, unigram_docs=-1)
    shapes = dict(name="shapes_captions", min_objects=1, max_objects=3, with_positions=True)
    c.data.train = ml_collections.ConfigDict(dict(shapes, num_records=20_000, seed=0))
    c.data.eval = ml_collections.ConfigDict(dict(shapes, num_records=1000, seed=1))
    if arg.data != "shapes_captions":
        c.data.train, c.data.eval = corpus_splits(arg.data, arg.corpus, arg.eval_corpus, text=True)
        c.evaluation.update(groups=64, unigram_docs=10_000)   # of a corpus: its head, not all of it
    # vocab_size 0: the tokenizer's (256 bytes + 4 specials = 260).
    c.model = ml_collections.ConfigDict(dict(preset=arg.preset, vocab_size=0, hidden_size=96, num_layers=2,
                                             num_heads=4, mlp_dim=256, max_len=128))
    c.optim.update(name="adamw", lr=3e-3, weight_decay=0.01, warmup_steps=30, schedule="cosine", clip_norm=1.0)
    return c
