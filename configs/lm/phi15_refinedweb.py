r"""Phi-1.5-sized LM (1.42B parameters) pre-trained from scratch on a web-text corpus (e.g. RefinedWeb).

Command:
  python -m mmjax.train --config configs/lm/phi15_refinedweb.py:corpus=/data/refinedweb/train-*.array_record,\
eval_corpus=/data/refinedweb/eval-*.array_record,tokenizer=/models/phi-1_5 --workdir /runs/phi15_rw
  (`format=jsonl` reads `{"text": ...}` lines instead; any field can be overridden, e.g. --config.total_steps=500.)
Data:      ArrayRecord shards of msgpack records with a "text" field (`mmjax.data.records.write_array_record`),
           or JSONL. Tokenizer: Phi-1.5's `tokenizer.json` (GPT-2 BPE, 50,295 ids incl. added tokens; the
           model's 51,200-row embedding leaves room), `<|endoftext|>` before and after every document.
Packing:   84 documents per group packed into 32 rows of 2048 slots; 64 groups per step = 2048 rows = 4.19M
           slots, Phi-1.5's batch (2048 x 2048). Group-local packing (mmjax/data/packing.py) trades fill for
           resumability: on a length model of web text (log-normal, mean 620 tokens, sigma 1.2) this gives about
           79% fill and 1.8% of tokens cut; the run logs `fill` and `overflow_tokens`, tune docs_per_group on
           the real corpus in the first few hundred steps.
Hardware:  64 x H100 80GB (8 hosts; mesh data=8 x fsdp=8, FSDP inside a host) or a TPU v5p-128 (64 chips).
           One group (32 rows = 65k slots) per device, bf16 compute, full remat of each block.
Schedule:  8,500 steps = 35.6B slots, about 28B real tokens at 79% fill: 20 tokens per parameter (Chinchilla).
           AdamW as in the Phi-1.5 report (lr 2e-4, betas 0.9/0.98, eps 1e-7, weight decay 0.1); unlike the
           report's constant rate, 500 warmup steps and cosine decay to 10% because the token budget is fixed.
Expected:  NOT RUN YET in mmjax; estimates only. Speed: docs/benchmarks.md measured a Phi-1.5 train step on one
           H100 at 51.4k tokens/s (8 x 2048, remat dots_with_no_batch_dims, no segment mask); full remat adds
           about a third, so about 38k slots/s per GPU, 1.7 s per 4.19M-slot step on 64 GPUs, about 4 h for
           8,500 steps before FSDP communication and the mask's cost. Loss: the Chinchilla fit (Hoffmann et al.
           2022) predicts 2.5 nats/token for this N and D on its own corpus and tokenizer, so only a sanity
           range; the eval must in any case sit far below `unigram_entropy` in metrics.jsonl. Record real
           numbers in docs/lm.md with the date, hardware and command when it has run.
"""

import ml_collections

from mmjax.configlib import parse_arg
from mmjax.train.defaults import trainer_config
from mmjax.train.tasks.lm import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, corpus="/data/refinedweb/train-*.array_record",
                    eval_corpus="/data/refinedweb/eval-*.array_record", format="arrayrecord",
                    tokenizer="/models/phi-1_5", steps=8500)
    # data_workers=0: grain threads tokenize a host's 8 groups (~0.4M tokens) well within a step (estimated);
    # worker processes (data_workers > 0) currently fail under `python -m mmjax.train` (grain reads absl flags
    # that nobody parsed), see docs/lm.md.
    c = trainer_config(task="lm", batch_size=64, total_steps=arg.steps, log_every=50, eval_every=1000,
                       checkpoint_every=500, keep_checkpoints=3, data_workers=0)
    c.update(default_config())
    c.mesh.update(data=-1, fsdp=8, tensor=1)
    c.tokenizer.update(kind="hf", path=arg.tokenizer, bos="<|endoftext|>", eos="<|endoftext|>")
    c.packing.update(seq_len=2048, rows=32, docs_per_group=84, add_bos=True, add_eos=True)
    # 64 eval groups (5,376 documents, about 3M tokens); unigram baseline from 20k training documents.
    c.evaluation.update(groups=64, unigram_docs=20_000)
    c.data.train = ml_collections.ConfigDict(dict(name=arg.format, pattern=arg.corpus, text_field="text"))
    c.data.eval = ml_collections.ConfigDict(dict(name=arg.format, pattern=arg.eval_corpus, text_field="text"))
    c.model = ml_collections.ConfigDict(dict(preset="phi-1.5", dtype="bfloat16", param_dtype="float32",
                                             remat_policy="full", scan_layers=True, attention_backend="auto"))
    c.optim.update(name="adamw", lr=2e-4, b1=0.9, b2=0.98, eps=1e-7, weight_decay=0.1, warmup_steps=500,
                   schedule="cosine", end_lr_frac=0.1, clip_norm=1.0)
    return c
