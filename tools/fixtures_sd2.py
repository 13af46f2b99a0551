#!/usr/bin/env python3
"""SD2.x single-file fixtures made with diffusers' own conversion logic
(scripts/convert_diffusers_to_original_stable_diffusion.py of the diffusers
repository: pass its path; it is not part of the pip package):

  .venv-tools/bin/python tools/fixtures_sd2.py /path/to/convert_diffusers_to_original_stable_diffusion.py

Writes
  tests/fixtures/names/sd2_ldm.txt       the full SD2.1 architecture (models built on the
                                         meta device): "ldm_name comp diffusers_name shape part"
  tests/fixtures/names/tiny_sd2_ldm.txt  the same for `easel make-model --arch tiny-sd2`
part is 0/1/2 when the converter concatenated q, k, v into one in_proj tensor
(that row block of it), -1 otherwise. test_loader.c checks ldm_name_part()
against the first and writes a single file from a made tiny-sd2 folder by the
second (the converter's mapping, not ours), then loads it and compares images.

Its v2 text-encoder test looks for 23 layers, so its v2 conversion is called
directly (the tiny model has 2). Tensors are stood in for by markers that
carry (component, diffusers name, shape), so the full architecture costs nothing.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "names")


class Marker:
    """Stands in for a tensor: what the converter reshapes or concatenates."""

    def __init__(self, comp, name, shape):
        self.comp, self.name, self.shape = comp, name, tuple(shape)

    @property
    def ndim(self):
        return len(self.shape)

    def reshape(self, *shape):
        return Marker(self.comp, self.name, shape)


def load_script(path):
    spec = importlib.util.spec_from_file_location("conv", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tag(sd, comp, prefix=""):
    return {prefix + k: Marker(comp, k, v.shape) for k, v in sd.items()}


def convert(conv, unet, vae, text):
    """The converter's functions on markers; torch.cat is recorded, not run."""
    rows = []
    for k, m in conv.convert_unet_state_dict(tag(unet, "unet")).items():
        rows.append(("model.diffusion_model." + k, m.comp, m.name, m.shape, -1))
    for k, m in conv.convert_vae_state_dict(tag(vae, "vae")).items():
        rows.append(("first_stage_model." + k, m.comp, m.name, m.shape, -1))
    real_cat = torch.cat
    torch.cat = lambda ts: list(ts)  # the converter fuses q, k, v with torch.cat
    try:
        t = conv.convert_text_enc_state_dict_v20(tag(text, "text_encoder", "transformer."))
    finally:
        torch.cat = real_cat
    for k, val in t.items():
        for part, m in enumerate(val) if isinstance(val, list) else [(-1, val)]:
            rows.append(("cond_stage_model.model." + k, m.comp, m.name, m.shape, part))
    return rows


def write(rows, name):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "w") as f:
        for ldm, c, n, s, part in sorted(rows):
            if "position_ids" in n:
                continue
            f.write(f"{ldm} {c} {n} {','.join(map(str, s))} {part}\n")
    print(f"{name}: {len(rows)} rows")


def full_sd2(conv):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    # stabilityai/stable-diffusion-2-1 configs (the architecture, not the weights)
    unet_cfg = dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                    cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True)
    vae_cfg = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                   block_out_channels=(128, 256, 512, 512),
                   down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4)
    te_cfg = CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                            num_attention_heads=16, hidden_act="gelu", projection_dim=512)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg).state_dict()
        vae = AutoencoderKL(**vae_cfg).state_dict()
        te = CLIPTextModel(te_cfg).state_dict()
    te = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in te.items()}
    write(convert(conv, unet, vae, te), "sd2_ldm.txt")


def tiny_sd2(conv):
    easel = os.environ.get("EASEL_BIN") or os.path.join(ROOT, "build", "easel")
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "m")
        subprocess.run([easel, "make-model", "--arch", "tiny-sd2", "--dtype", "f32", "--seed", "3",
                        "--out", d], check=True)
        ld = lambda c, f: load_file(os.path.join(d, c, f))
        unet = ld("unet", "diffusion_pytorch_model.safetensors")
        vae = ld("vae", "diffusion_pytorch_model.safetensors")
        te = ld("text_encoder", "model.safetensors")
    write(convert(conv, unet, vae, te), "tiny_sd2_ldm.txt")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    conv = load_script(sys.argv[1])
    full_sd2(conv)
    tiny_sd2(conv)
