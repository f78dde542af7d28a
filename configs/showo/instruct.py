r"""Show-o 1.3B instruction tuning on LLaVA data (multimodal understanding), stages 1-2 at 256 or 512 px, with
discrete image tokens (default) or CLIP-ViT features (`clip=1`, "Show-o with CLIP-ViT").

Command:   python -m mmjax.train --config configs/showo/instruct.py:stage=1,res=512 --workdir /runs/showo_it1_512 \
               --config.init.run=/runs/showo_s3_512
           python -m mmjax.train --config configs/showo/instruct.py:stage=2,res=512 --workdir /runs/showo_it2_512 \
               --config.init.run=/runs/showo_it1_512
           (or start from released pre-trained weights converted to safetensors: --config.init.showo=DIR)
Data:      MMU: LLaVA JSON + image folder (`llava_json`): stage 1 LLaVA-Pretrain-558K (blip_laion_cc_sbu_558k),
           stage 2 LLaVA-v1.5-mix-665K (text-only records have no image and are skipped and counted); rendered
           with the phi1.5 template "USER: q ASSISTANT: a<|endoftext|>" after `<|mmu|><|soi|> img <|eoi|>`, only
           the answers supervised, `<image>` and its newline removed from the text (the reference's
           `preprocess_multimodal`), S = 381 text tokens: rows of L = 640 (256 px) or 1408 (512 px). Stage 1
           uses the same template as stage 2: the discrete variant's training/train.py reads LLaVA-Pretrain
           through `llava_data_vq_unified.py` (phi1.5), not the `plain` format of the CLIP-ViT variant.
           T2I and LM rows keep stage 3's LAION-aesthetics + JourneyDB pairs and RefinedWeb text (assumption: the
           recipe table names only the MMU data).
Recipe:    per-device mix t2i/lm/mmu = 4/2/7 (stage 1, 256 px), 5/2/5 (stage 1, 512 px), 4/2/6 (stage 2, 256 px),
           5/2/5 (stage 2, 512 px); steps 10k / 14k (stage 1, 256 / 512), 14k / 16k (stage 2); lr 2e-5 (stage 1),
           5e-5 (stage 2), 1k warmup steps, cosine to 0; otherwise as configs/showo/pretrain.py. One bundle per
           device: batch_size = the device count (`devices=`, default 32; the reference's count for tuning is
           not given in showo.md). Released Show-o weights use exactly this layout (mmjax.convert.showo).
Hardware:  one bundle per GPU, bf16, FSDP within a host, full remat. NOT RUN in mmjax at this scale.
CLIP-ViT:  `clip=1` follows train_w_clip_vit.py and its yaml files: a frozen CLIP ViT-L/14-336
           (`vision.hf`, HF `openai/clip-vit-large-patch14-336`; 576 features of its second-to-last layer) ->
           `mm_projector` -> Show-o. MMU rows `<|mmu|> system <|soi|> 576 features <|eoi|> text` under the
           reference's CLIP mask. Stage 1: only `mm_projector` trains (`optim.frozen`), LLaVA-Pretrain in the
           `plain` format (caption + newline + eos, all supervised), no system prompt, S = 512, mix 2/2/10,
           lr 2e-3, 10k steps (7k at 512 px), from the pre-trained Show-o (init.run = the stage-3 run; its
           mm_projector starts fresh): the README copies that checkpoint in as `checkpoint-0` and
           train_w_clip_vit.py resumes it with strict=False (the yaml's `load_from_showo: False` only builds
           the skeleton before that resume).
           Stage 2: everything but the tower trains, LLaVA-665K with the phi1.5 template after the 28-token system
           prompt "A chat between a curious user ...", S = 576, mix 3/1/4, lr 1e-4, 19.6k steps. Warmup 1k,
           cosine to 0. Rows of L = S + N + 3 (771 / 835 at 256 px); the MMU text budget is S + N - 576 - system.
Expected:  the paper's Show-o (512 px, after stage 2): POPE 80.0, MME 1097.2, Flickr30k 62.5, VQAv2 69.4, GQA 58.0,
           MMMU 26.7 (Show-o with CLIP-ViT, `model.w_clip_vit`: 84.5 / 1232.9 / 67.6 / 74.7 / 61.0 / 27.4), scored
           from the answer files with mmjax.eval (vqa, pope, mme).
"""

import importlib.util
import os

import ml_collections

from mmjax.configlib import ConfigError, parse_arg
from mmjax.data.conversation import VICUNA_SYSTEM
from mmjax.train.tasks.showo_clip import CLIP_L14

_spec = importlib.util.spec_from_file_location("_showo_pretrain", os.path.join(os.path.dirname(__file__),
                                                                                "pretrain.py"))
pretrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain)

RECIPES = {  # (stage, res): mix (t2i, lm, mmu), steps
    (1, 256): ((4, 2, 7), 10_000), (1, 512): ((5, 2, 5), 14_000),
    (2, 256): ((4, 2, 6), 14_000), (2, 512): ((5, 2, 5), 16_000),
}
LR = {1: 2e-5, 2: 5e-5}
CLIP_RECIPES = {  # (stage, res): mix, steps, lr, S (max_seq_length)
    (1, 256): ((2, 2, 10), 10_000, 2e-3, 512), (1, 512): ((2, 2, 10), 7_000, 2e-3, 512),
    (2, 256): ((3, 1, 4), 19_600, 1e-4, 576), (2, 512): ((3, 1, 4), 19_600, 1e-4, 576),
}
LLAVA = {1: ("/data/llava/blip_laion_cc_sbu_558k.json", "/data/llava/pretrain_images"),
         2: ("/data/llava/llava_v1_5_mix665k.json", "/data/llava/finetune_images")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, stage=1, res=512, devices=32, clip=False)
    if (arg.stage, arg.res) not in RECIPES:
        raise ConfigError(f"stage={arg.stage}, res={arg.res}: instruction tuning has stages 1, 2 at 256 / 512 px")
    if arg.clip:
        mix, steps, lr, max_text_len = CLIP_RECIPES[(arg.stage, arg.res)]
    else:
        (mix, steps), lr, max_text_len = RECIPES[(arg.stage, arg.res)], LR[arg.stage], 381
    c = pretrain.base_config(arg.res, max_text_len, mix, steps, lr, 1_000, arg.devices)
    c.eval_every = 2_000
    c.checkpoint_every = 1_000
    name = "showo_clip_it" if arg.clip else "showo_it"
    c.init.run = f"/runs/showo_s3_{arg.res}" if arg.stage == 1 else f"/runs/{name}1_{arg.res}"
    mmu_format = "conversation"
    if arg.clip:
        c.model.w_clip_vit = True
        c.vision = ml_collections.ConfigDict(dict(tower=CLIP_L14, image_size=336,
                                                  hf="/models/clip-vit-large-patch14-336", seed=0))
        if arg.stage == 1:  # projector alignment on the pre-trained Show-o (fresh projector): all else frozen
            c.optim.frozen = (r"^lm/",)
            mmu_format = "plain"
        else:
            c.showo.system_prompt = VICUNA_SYSTEM
    json_path, images = LLAVA[arg.stage]
    llava = lambda path: ml_collections.ConfigDict(dict(
        source=ml_collections.ConfigDict(dict(name="llava_json", json=path, images=images)), format=mmu_format))
    t2i = ml_collections.ConfigDict(dict(source=pretrain.arrayrecord(pretrain.T2I_DATA[3]), text_field="caption",
                                         recaption=True))
    text = ml_collections.ConfigDict(dict(source=pretrain.arrayrecord("/data/refinedweb/train-*.array_record"),
                                          text_field="text", window=pretrain.REFINEDWEB_WINDOW))
    c.data.train = ml_collections.ConfigDict(dict(t2i=t2i, lm=text, mmu=llava(json_path)))
    c.data.eval = ml_collections.ConfigDict(dict(
        t2i=ml_collections.ConfigDict(dict(source=pretrain.arrayrecord("/data/t2i_eval/*.array_record"),
                                           text_field="caption")),
        lm=ml_collections.ConfigDict(dict(source=pretrain.arrayrecord("/data/refinedweb/eval-*.array_record"),
                                          text_field="text")),
        mmu=llava("/data/llava/eval_qa.json")))
    return c
