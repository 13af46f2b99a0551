"""SD1.5 parameter names and shapes, in diffusers' layout and in the single-file
(LDM / CompVis) layout, for tests/test_loader.c. The LDM names are derived by
inverting diffusers' own converters, and the script checks that diffusers'
converters map that LDM set back onto exactly the diffusers set.

Writes tests/fixtures/names/sd15_diffusers.txt ("component name d0,d1,..") and
tests/fixtures/names/sd15_ldm.txt ("ldm_name component diffusers_name d0,d1,.."
where the shape is the LDM one, e.g. VAE attention weights keep their 1x1 dims).
"""
import os
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "names")

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
)


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def meta_models():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        clip = CLIPTextModel(CLIPTextConfig(**SD15_CLIP))
    # transformers 5 dropped the "text_model." level from CLIPTextModel's
    # state dict (it still loads both); SD1.5's files and our networks use it.
    c = {(k if k.startswith("text_model.") else "text_model." + k): s
         for k, s in shapes(clip).items() if not k.endswith("position_ids")}
    return shapes(unet), shapes(vae), c


# ---- diffusers -> LDM (the inverse of diffusers' converters) ----
RESNET_LDM = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
              ("conv_shortcut", "skip_connection")]


def unet_to_ldm(name, lpb=2, up_attn=(False, True, True, True)):
    fixed = sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if name in fixed:
        return fixed[name]
    p = name.split(".")

    def resnet(prefix, rest):
        inner = ".".join(rest)
        for a, b in RESNET_LDM:
            if inner.startswith(a + "."):
                return prefix + "." + b + inner[len(a):]
        raise KeyError(name)

    if p[0] == "down_blocks":
        b, kind = int(p[1]), p[2]
        if kind == "downsamplers":
            return f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op." + ".".join(p[5:])
        j = int(p[3])
        idx = 1 + b * (lpb + 1) + j
        if kind == "resnets":
            return resnet(f"input_blocks.{idx}.0", p[4:])
        return f"input_blocks.{idx}.1." + ".".join(p[4:])
    if p[0] == "mid_block":
        j = int(p[2])
        if p[1] == "resnets":
            return resnet(f"middle_block.{2 * j}", p[3:])
        return "middle_block.1." + ".".join(p[3:])
    if p[0] == "up_blocks":
        b, kind = int(p[1]), p[2]
        if kind == "upsamplers":
            sub = 2 if up_attn[b] else 1
            return f"output_blocks.{b * (lpb + 1) + lpb}.{sub}.conv." + ".".join(p[5:])
        j = int(p[3])
        idx = b * (lpb + 1) + j
        if kind == "resnets":
            return resnet(f"output_blocks.{idx}.0", p[4:])
        return f"output_blocks.{idx}.1." + ".".join(p[4:])
    raise KeyError(name)


VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
            ("to_out.0.", "proj_out.")]


def vae_to_ldm(name, levels=4):
    fixed = sfu.DIFFUSERS_TO_LDM_MAPPING["vae"]
    if name in fixed:
        return fixed[name]
    p = name.split(".")
    part = p[0]
    if p[1] == "mid_block":
        if p[2] == "resnets":
            return f"{part}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:]).replace(
                "conv_shortcut", "nin_shortcut")
        inner = ".".join(p[4:])
        for a, b in VAE_ATTN:
            if inner.startswith(a):
                return f"{part}.mid.attn_1." + b + inner[len(a):]
        raise KeyError(name)
    if p[1] == "down_blocks":
        i = int(p[2])
        if p[3] == "downsamplers":
            return f"encoder.down.{i}.downsample.conv." + ".".join(p[6:])
        return f"encoder.down.{i}.block.{p[4]}." + ".".join(p[5:]).replace(
            "conv_shortcut", "nin_shortcut")
    if p[1] == "up_blocks":
        i = levels - 1 - int(p[2])
        if p[3] == "upsamplers":
            return f"decoder.up.{i}.upsample.conv." + ".".join(p[6:])
        return f"decoder.up.{i}.block.{p[4]}." + ".".join(p[5:]).replace(
            "conv_shortcut", "nin_shortcut")
    raise KeyError(name)


def ldm_shape(comp, name, shape):
    # LDM's VAE attention q/k/v/proj_out are 1x1 convolutions.
    if comp == "vae" and ".mid.attn_1." in name and name.endswith("weight") and len(shape) == 2:
        return shape + (1, 1)
    return shape


class Named:
    """Stands in for a tensor in diffusers' converters: remembers its LDM name."""

    def __init__(self, name, shape):
        self.name, self.shape = name, tuple(shape)
        self.ndim = len(self.shape)

    def __getitem__(self, idx):
        keep = [d for d, ix in zip(self.shape, idx) if not isinstance(ix, int)]
        return Named(self.name, tuple(keep) + self.shape[len(idx):])


def check_converters(unet, vae, clip, rows):
    ldm = {r[0]: Named(r[0], r[3]) for r in rows}
    ucfg = dict(layers_per_block=2)
    got = {}
    u = sfu.convert_ldm_unet_checkpoint(ldm, ucfg)
    got.update({("unet", k): v for k, v in u.items()})
    v = sfu.convert_ldm_vae_checkpoint(ldm, dict(down_block_types=[0] * 4, up_block_types=[0] * 4))
    got.update({("vae", k): x for k, x in v.items()})
    c = sfu.convert_ldm_clip_checkpoint(ldm)
    got.update({("text_encoder", k): x for k, x in c.items()})
    want = {("unet", k): s for k, s in unet.items()}
    want.update({("vae", k): s for k, s in vae.items()})
    want.update({("text_encoder", k): s for k, s in clip.items()})
    assert set(got) == set(want), (sorted(set(got) ^ set(want))[:20])
    back = {(r[1], r[2]): r[0] for r in rows}
    for key, t in got.items():
        assert t.shape == want[key], (key, t.shape, want[key])
        assert back[key] == t.name, (key, t.name, back[key])


def main():
    unet, vae, clip = meta_models()
    rows = []  # (ldm name, component, diffusers name, ldm shape)
    for n, s in unet.items():
        rows.append(("model.diffusion_model." + unet_to_ldm(n), "unet", n, s))
    for n, s in vae.items():
        ln = vae_to_ldm(n)
        rows.append(("first_stage_model." + ln, "vae", n, ldm_shape("vae", ln, s)))
    for n, s in clip.items():
        rows.append(("cond_stage_model.transformer." + n, "text_encoder", n, s))
    assert len({r[0] for r in rows}) == len(rows), "LDM names collide"
    check_converters(unet, vae, clip, rows)
    os.makedirs(OUT, exist_ok=True)
    fmt = lambda s: ",".join(str(d) for d in s)
    with open(os.path.join(OUT, "sd15_diffusers.txt"), "w") as f:
        for comp, d in (("unet", unet), ("vae", vae), ("text_encoder", clip)):
            for n, s in d.items():
                f.write(f"{comp} {n} {fmt(s)}\n")
    with open(os.path.join(OUT, "sd15_ldm.txt"), "w") as f:
        for r in rows:
            f.write(f"{r[0]} {r[1]} {r[2]} {fmt(r[3])}\n")
    print(f"names: unet {len(unet)}, vae {len(vae)}, text_encoder {len(clip)}; "
          f"LDM set maps back through diffusers' converters", file=sys.stderr)


if __name__ == "__main__":
    main()
