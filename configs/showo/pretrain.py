r"""Show-o 1.3B pre-training (Phi-1.5 + MAGVIT-v2 tokens), the three stages of the paper, at 256 or 512 px.

Command:   python -m mmjax.train --config configs/showo/pretrain.py:stage=1,res=256 --workdir /runs/showo_s1_256
           then stage=2 (init from the stage-1 run) and stage=3 (init from stage 2), e.g.
           python -m mmjax.train --config configs/showo/pretrain.py:stage=2,data=tokenized \
               --workdir /runs/showo_s2_256 --config.init.run=/runs/showo_s1_256
Weights:   Phi-1.5 as a HF checkpoint directory (`init.lm`, loaded by mmjax.convert.hf_lm; the 51,200 embedding
           and lm_head rows are kept, Show-o's special / image / mask rows are new, QK-norms start at w=1, b=0);
           Show-o's MAGVIT-v2 tokenizer converted to safetensors (`tokenizer.converted`, mmjax.convert.magvitv2),
           frozen in model_state. Text: Phi-1.5's tokenizer.json (50,295 ids; bos = eos = 50256).
Data:      stage 1  T2I: ImageNet-1k through tfds (`imagenet2012`, prepared as ArrayRecord), class names as
                    prompts (`class_names`: one human-readable name per line, label order);
                    MMU: image-caption pairs (SA-1B / CC12M / LAION-aesthetics-12M captions) in caption format;
                    LM: RefinedWeb text (its parquet files, the `content` column).
           stage 2  T2I on the image-caption pairs of SA-1B + CC12M + LAION-aesthetics-12M; MMU and LM as stage 1.
           stage 3  T2I on LAION-aesthetics-12M + JourneyDB; MMU and LM as stage 1.
           `data=raw` (default): image-caption pairs are img2dataset's webdataset tar shards under /data/<corpus>/
           (jpg + txt per sample), tokenized on the accelerators every step (`tokenizer.pretokenize=False`).
           `data=tokenized`: the same corpora tokenized once by `python -m mmjax.tokenize_images` into
           /data/<corpus>_ids<res>/ids-*.array_record (ImageNet from tfds into /data/imagenet_ids<res>/; records
           keep their label), the step reads the codes from the records (`tokenizer.pretokenize=True`), so no
           tokenizer runs during training. docs/data.md has the commands and the host cores each needs. Paths
           are fields (`--config.data.train.t2i.source.pattern=...`).
Recipe:    per-device mix t2i/lm/mmu = 15/4/10 (stage 1), 10/4/10 (stages 2, 3); one bundle per device, so
           batch_size = the device count (48 here: the reference's global batch 48 x 29 = 1392 in stage 1,
           48 x 24 = 1152 in stage 2). Steps 500k / 1M / 50k; AdamW (0.9, 0.999), wd 0.01 on all but biases,
           eps 1e-8, no gradient clipping; lr 1e-4, 1e-4, 2e-5 with 5k warmup steps, cosine to 0; loss 1.0 MTP
           + 0.1 LM + 1.0 MMU; caption dropout 0.1; min masking rate 0; no label smoothing;
           S = 128 text tokens -> rows of L = 387 (256 px, 16x16 tokens) or 1155 (512 px, 32x32 tokens).
Hardware:  48 GPUs (the reference: accelerate + DeepSpeed ZeRO-2, bf16); here bf16 compute, fp32 params, FSDP
           within a host (mesh fsdp=8). Speed settings from measurements on one H200 (docs/benchmarks.md):
           unrolled layers (scan_layers=False: 200 ms/step against 248 scanned), no remat (one 29-row bundle
           peaks at 69 GiB without it), rows padded to a multiple of 8 (showo.seq_multiple: 387 -> 392, losses
           unchanged) and the 58,498-wide head padded to 58,624 (model.vocab_pad_multiple). On chips with less
           memory set model.remat_policy=full (the TPU slice variants set their own). The 256 px stage-1 step is
           checked to compile on 8 CPU devices (tests/train/test_showo_task.py, `-m slow`) and for v5e-16 / v5p-64
           (docs/tpu.md). NOT RUN in mmjax at this scale.
TPU:       `slice=v5e-16` or `slice=v5p-64` (256 px, any stage) keeps the 48 bundles per update on that slice: mesh,
           bundles per micro-step and gradient accumulation from `SLICE_PLANS`, checked with the compile-only
           pre-flight (docs/tpu.md has the per-chip memory):
           python -m mmjax.train --config configs/showo/pretrain.py:stage=1,slice=v5e-16 --compile_only \
               --topology v5e-16
Expected:  the paper's Show-o 1.3B after stage 3: GenEval overall 0.53 (256 px) / 0.68 (512 px: single 0.98,
           two 0.80, counting 0.66, colors 0.84, position 0.31, color-attr 0.50); MSCOCO-30K FID 9.24 (512 px,
           with COCO-like fine-tuning data). Stages 1 and 2 have no published numbers; a normal t2i_loss is 4-8.
           GenEval: sample with `python -m mmjax.sample` into mmjax.eval.geneval's layout, then GenEval's scorer.
"""

import ml_collections

from mmjax.configlib import ConfigError, parse_arg
from mmjax.models.showo_layout import SHOWO_SPECIAL_TOKENS
from mmjax.train.defaults import trainer_config
from mmjax.train.tpu_slices import SlicePlan, apply_slice_plan

STAGES = {  # mix (t2i, lm, mmu) per device, steps, lr
    1: ((15, 4, 10), 500_000, 1e-4),
    2: ((10, 4, 10), 1_000_000, 1e-4),
    3: ((10, 4, 10), 50_000, 2e-5),
}
GLOBAL_BUNDLES = 48  # the reference's 48 GPUs x one bundle each, per update
SLICE_PLANS = {  # 256 px; (bundles per micro-step) x grad_accum = 48
    "v5e-16": SlicePlan(fsdp=8, tensor=2, batch_size=8, grad_accum=6),
    "v5p-64": SlicePlan(fsdp=16, tensor=2, batch_size=48, grad_accum=1),
}
SLICE_REMAT = {"v5e-16": "full", "v5p-64": "dots_with_no_batch_dims"}  # the policy each slice's pre-flight checked
T2I_DATA = {  # ArrayRecord shards of {"image": bytes, "caption"} per stage's mixture (read by instruct.py)
    2: "/data/t2i_sa1b_cc12m_laion_aes/*.array_record",
    3: "/data/t2i_laion_aes_journeydb/*.array_record",
}
T2I_CORPORA = {2: "t2i_sa1b_cc12m_laion_aes", 3: "t2i_laion_aes_journeydb"}  # one corpus folder per stage's mixture
DATA = ("raw", "tokenized")   # `:data=`: image-caption pairs as webdataset shards, or their pre-tokenized codes

REFINEDWEB_WINDOW = 8000   # characters (parquet/refinedweb_dataset.py's max_length)
# The reference's caption-prompt questions (`add_caption_prompt: True`): copy showlab/Show-o's
# training/questions.json here (a JSON list of strings).
CAPTION_QUESTIONS = "/data/showo/questions.json"


def arrayrecord(pattern: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="arrayrecord", pattern=pattern))


def base_config(res: int, max_text_len: int, mix: tuple[int, int, int], steps: int, lr: float, warmup: int,
                devices: int, guidance: float = 0.0) -> ml_collections.ConfigDict:
    """What every Show-o 1.3B config shares: model, vocabulary, tokenizer, loss, optimizer, mesh.

    The optimizer is the reference's (training/train.py and its yaml files): AdamW (0.9, 0.999), eps 1e-8, weight
    decay 0.01 on every parameter except biases (its no-decay list "bias", "layer_norm.weight", "mlm_ln.weight",
    "embeddings.weight" matches only biases in Phi's names, so LayerNorm weights and the embedding are decayed),
    no gradient clipping (`max_grad_norm: null`), linear warmup then cosine to 0. Validation samples as the
    reference's do: 12 steps, guidance `guidance` (1.5 in pre-training stage 1, 0 elsewhere)."""
    if res not in (256, 512):
        raise ConfigError(f"res={res}: Show-o is trained at 256 or 512 px")
    c = trainer_config(task="showo", batch_size=devices, total_steps=steps, log_every=50, eval_every=10_000,
                       checkpoint_every=5_000, keep_checkpoints=3, data_workers=8)
    c.mesh.update(data=-1, fsdp=8, tensor=1)
    c.model = ml_collections.ConfigDict(dict(preset="phi-1.5", qk_norm="layernorm", dtype="bfloat16",
                                             param_dtype="float32", scan_layers=False, remat_policy="none",
                                             attention_backend="auto", vocab_pad_multiple=128, w_clip_vit=False))
    c.text = ml_collections.ConfigDict(dict(kind="hf", path="/models/phi-1_5", bos="<|endoftext|>",
                                            eos="<|endoftext|>"))
    c.vocab = ml_collections.ConfigDict(dict(text_vocab_size=50295, bos_id=50256, eos_id=50256, codebook_size=8192,
                                             special_tokens=SHOWO_SPECIAL_TOKENS))
    c.tokenizer = ml_collections.ConfigDict(dict(workdir="", converted="/models/magvitv2/model.safetensors",
                                                 model=ml_collections.ConfigDict(), image_size=res,
                                                 pretokenize=False))
    t2i, lm, mmu = mix
    c.showo = ml_collections.ConfigDict(dict(
        max_text_len=max_text_len, mix=ml_collections.ConfigDict(dict(t2i=t2i, lm=lm, mmu=mmu)),
        t2i_coeff=1.0, lm_coeff=0.1, mmu_coeff=1.0, cond_dropout_prob=0.1, min_masking_rate=0.0,
        mask_schedule="cosine", label_smoothing=0.0, system_prompt="", seq_multiple=8, loss_normalization="device"))
    c.init = ml_collections.ConfigDict(dict(lm="", showo="", run=""))
    c.eval = ml_collections.ConfigDict(dict(num_t2i=32, num_mmu=0, t2i_steps=12, guidance_scale=guidance,
                                            generation_temperature=1.0, logit_temperature=1.0, max_new_tokens=100,
                                            loss_batches=4, batch=8, seed=0, mmu_top_k=1, mmu_temperature=1.0))
    c.optim.update(name="adamw", lr=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, warmup_steps=warmup,
                   schedule="cosine", end_lr_frac=0.0, clip_norm=0.0, no_decay=(r"(^|/)bias$",))
    return c


def image_text(corpus: str, data: str, res: int) -> ml_collections.ConfigDict:
    """An image-caption corpus under /data: img2dataset's webdataset shards (`raw`) or their codes at `res` px
    written by `python -m mmjax.tokenize_images` (`tokenized`)."""
    if data == "raw":
        return ml_collections.ConfigDict(dict(name="webdataset", pattern=f"/data/{corpus}/*.tar"))
    return arrayrecord(f"/data/{corpus}_ids{res}/ids-*.array_record")


def refinedweb(folder: str) -> ml_collections.ConfigDict:
    """RefinedWeb's parquet files as LM text (the `content` column; the record's text field is `caption`), newlines
    removed and a random window of 8000 characters of longer documents, as the reference's RefinedWebDataset."""
    source = ml_collections.ConfigDict(dict(name="parquet", pattern=f"/data/{folder}/*.parquet", image_column="",
                                            caption_column="content"))
    return ml_collections.ConfigDict(dict(source=source, text_field="caption", window=REFINEDWEB_WINDOW))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, stage=1, res=256, devices=48, data="raw", slice="")
    if arg.stage not in STAGES:
        raise ConfigError(f"stage={arg.stage}: pre-training has stages 1, 2, 3")
    if arg.data not in DATA:
        raise ConfigError(f"data={arg.data!r}: one of {DATA}")
    mix, steps, lr = STAGES[arg.stage]
    c = base_config(arg.res, 128, mix, steps, lr, 5_000, arg.devices, guidance=1.5 if arg.stage == 1 else 0.0)
    c.tokenizer.pretokenize = arg.data == "tokenized"
    pairs = lambda corpus: image_text(corpus, arg.data, arg.res)
    mmu = ml_collections.ConfigDict(dict(source=pairs("captions_sa1b_cc12m_laion_aes"), format="caption",
                                         text_field="caption", questions=CAPTION_QUESTIONS))
    if arg.stage == 1:
        c.init.lm = "/models/phi-1_5"
        def imagenet(split: str) -> ml_collections.ConfigDict:
            source = (ml_collections.ConfigDict(dict(name="tfds", dataset="imagenet2012", split=split, data_dir=""))
                      if arg.data == "raw" else arrayrecord(f"/data/imagenet_{split}_ids{arg.res}/ids-*.array_record"))
            return ml_collections.ConfigDict(dict(source=source, text_field="caption",
                                                  class_names="/data/imagenet/class_names.txt"))
        t2i, t2i_eval = imagenet("train"), imagenet("validation")
    else:
        c.init.run = f"/runs/showo_s{arg.stage - 1}_{arg.res}"
        # recaptioned pairs: first sentence half of the time, recaptioner openings removed (training/data.py)
        t2i = ml_collections.ConfigDict(dict(source=pairs(T2I_CORPORA[arg.stage]), text_field="caption",
                                             recaption=True))
        t2i_eval = ml_collections.ConfigDict(dict(source=pairs("t2i_eval"), text_field="caption"))
    c.data.train = ml_collections.ConfigDict(dict(t2i=t2i, lm=refinedweb("refinedweb"), mmu=mmu))
    eval_mmu = ml_collections.ConfigDict(dict(source=pairs("captions_eval"), format="caption", text_field="caption",
                                              questions=CAPTION_QUESTIONS))
    c.data.eval = ml_collections.ConfigDict(dict(t2i=t2i_eval, lm=refinedweb("refinedweb_eval"), mmu=eval_mmu))
    if arg.slice:
        if arg.res != 256:
            raise ConfigError(f"slice={arg.slice}: the TPU slice plans are for res=256")
        apply_slice_plan(c, arg.slice, SLICE_PLANS, GLOBAL_BUNDLES)
        # 16-95 GiB chips, not an H200's 141: blocks rematerialised (v5p keeps the weight matmuls' outputs), and
        # scanned (one block to compile, the layout MaxText uses on TPU); docs/tpu.md has their pre-flight numbers.
        c.model.update(remat_policy=SLICE_REMAT[arg.slice], scan_layers=True)
    return c
