#!/usr/bin/env python3
"""SDXL single-file (SGM: model.diffusion_model.*, first_stage_model.*,
conditioner.embedders.{0,1}.*) names for every diffusers parameter, as
diffusers' own converters map them, both ways:

  diffusers -> single file: scripts/convert_diffusers_to_original_sdxl.py of the
      diffusers repository (not in the pip package: pass its path);
  single file -> diffusers: diffusers.loaders.single_file_utils
      (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
      convert_ldm_clip_checkpoint, convert_open_clip_checkpoint), what
      from_single_file runs.

The second is run on the first's output and must give every parameter back
from the same stored tensor (and the same third of a fused q/k/v in_proj);
the script fails otherwise. Usage:

  .venv-tools/bin/python tools/fixtures_sdxl_names.py /path/to/convert_diffusers_to_original_sdxl.py

Writes, as "ldm_name component diffusers_name diffusers_shape part" rows
(part: 0/1/2 a third of a fused in_proj, 3 the transpose (OpenCLIP's
text_projection), -1 the tensor as it is):
  tests/fixtures/names/sdxl_ldm.txt       SDXL base 1.0's architecture (built on the meta device)
  tests/fixtures/names/tiny_sdxl_ldm.txt  `easel make-model --arch tiny-sdxl`
tests/test_loader.c checks ldm_name_part() against the first, that the
networks request exactly its diffusers names and shapes, and writes a single
file from a made tiny-sdxl folder with the second (the converters' mapping,
not ours), then loads it and compares images with the folder's.
"""
import contextlib
import importlib.util
import io
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "names")
T_PART = 3


class Marker:
    """Stands in for a tensor in the diffusers -> LDM direction."""

    def __init__(self, comp, name, shape, transposed=False):
        self.comp, self.name, self.shape, self.transposed = comp, name, tuple(shape), transposed

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def T(self):
        return Marker(self.comp, self.name, self.shape[::-1], not self.transposed)

    def contiguous(self):
        return self

    def reshape(self, *shape):
        return Marker(self.comp, self.name, shape, self.transposed)


def load_script(path):
    spec = importlib.util.spec_from_file_location("conv_sdxl", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tag(sd, comp):
    return {k: Marker(comp, k, v.shape) for k, v in sd.items()}


def to_ldm(conv, unet, vae, te1, te2):
    """diffusers -> LDM with the repository script; rows (ldm, comp, name,
    diffusers shape, part). (The script also reshapes the VAE's attention
    weights to 1x1 convolutions; the shape column keeps diffusers' [C, C].)"""
    rows = []
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every VAE reshape
        for k, m in conv.convert_unet_state_dict(tag(unet, "unet")).items():
            rows.append(("model.diffusion_model." + k, m.comp, m.name, m.shape, -1))
        for k, m in conv.convert_vae_state_dict(tag(vae, "vae")).items():
            rows.append(("first_stage_model." + k, m.comp, m.name, m.shape, -1))
    for k, m in conv.convert_openai_text_enc_state_dict(tag(te1, "text_encoder")).items():
        rows.append(("conditioner.embedders.0.transformer." + k, m.comp, m.name, m.shape, -1))
    real_cat = torch.cat
    torch.cat = lambda ts: list(ts)  # the script fuses q, k, v with torch.cat
    try:
        t = conv.convert_openclip_text_enc_state_dict(tag(te2, "text_encoder_2"))
    finally:
        torch.cat = real_cat
    for k, val in t.items():
        ldm = "conditioner.embedders.1.model." + k
        if k == "text_projection.weight":  # the script's own step: stored transposed
            ldm = ldm[:-len(".weight")]
            val = val.T
        for part, m in enumerate(val) if isinstance(val, list) else [(-1, val)]:
            rows.append((ldm, m.comp, m.name, m.shape, T_PART if m.transposed else part))
    shapes = {c: {k: tuple(v.shape) for k, v in sd.items()}
              for c, sd in (("unet", unet), ("vae", vae), ("text_encoder", te1),
                            ("text_encoder_2", te2))}
    return [(l, c, n, shapes[c][n], p) for l, c, n, _, p in rows if "position_ids" not in n]


def from_ldm(rows, unet_cfg, vae_cfg, te2_model):
    """LDM -> diffusers with single_file_utils on stand-ins whose values say which
    stored tensor (and third) they are; returns {(comp, name): (ldm, part)}."""
    from diffusers.loaders import single_file_utils as sfu
    ldm_names = sorted({r[0] for r in rows})
    ident = {n: i for i, n in enumerate(ldm_names)}
    fused = {r[0]: r for r in rows if r[4] in (0, 1, 2)}
    ck = {}
    for n in ldm_names:
        v = float(4 * ident[n])
        if n in fused:  # rows = 3 x width, each third marked
            w = fused[n][3][0]
            t = torch.cat([torch.full((w,), v + k) for k in range(3)])
            ck[n] = t[:, None] if n.endswith("in_proj_weight") else t
        elif n.endswith("text_projection"):  # shape[0] is what the converter slices by
            width = next(r[3][1] for r in rows if r[0] == n)  # diffusers [proj, width]
            ck[n] = torch.full((width, 1), v)
        else:
            ck[n] = torch.full((1,), v)
    got = {}

    def record(comp, d):
        for k, t in d.items():
            vals = set(t.flatten().tolist())
            assert len(vals) == 1, (k, vals)
            val = int(vals.pop())
            got[(comp, k)] = (ldm_names[val // 4], val % 4)

    record("unet", sfu.convert_ldm_unet_checkpoint(ck, unet_cfg))
    record("vae", sfu.convert_ldm_vae_checkpoint(ck, vae_cfg))
    te1 = sfu.convert_ldm_clip_checkpoint(ck)
    record("text_encoder", {k: v for k, v in te1.items() if k.startswith("text_model.")})
    te2 = sfu.convert_open_clip_checkpoint(te2_model, ck, prefix="conditioner.embedders.1.model.")
    record("text_encoder_2", {k if k.startswith(("text_model.", "text_projection")) else
                              "text_model." + k: v for k, v in te2.items()})
    return got


def check_both_ways(rows, got):
    want = {}
    for ldm, comp, name, _, part in rows:
        want[(comp, name)] = (ldm, 0 if part in (-1, T_PART) else part)
    missing = set(want) - set(got)
    extra = set(got) - set(want)
    wrong = [k for k in want if k in got and got[k] != want[k]]
    if missing or extra or wrong:
        sys.exit(f"converters disagree: {len(missing)} missing {sorted(missing)[:3]}, "
                 f"{len(extra)} extra {sorted(extra)[:3]}, {len(wrong)} wrong "
                 f"{[(k, want[k], got[k]) for k in wrong[:3]]}")


def write(rows, name):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "w") as f:
        for ldm, c, n, s, part in sorted(rows):
            f.write(f"{ldm} {c} {n} {','.join(map(str, s))} {part}\n")
    print(f"{name}: {len(rows)} rows ({len({r[0] for r in rows})} stored tensors), "
          "the same both ways")


def te_prefix(sd):
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in sd.items()}


# stabilityai/stable-diffusion-xl-base-1.0's configs (the architecture, not the weights)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
                 cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025)


def full_sdxl(conv):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    te1_cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768)
    te2_cfg = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                             num_attention_heads=20, hidden_act="gelu", projection_dim=1280)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        te1 = CLIPTextModel(te1_cfg)
        te2 = CLIPTextModelWithProjection(te2_cfg)
    rows = to_ldm(conv, unet.state_dict(), vae.state_dict(), te_prefix(te1.state_dict()),
                  te_prefix(te2.state_dict()))
    check_both_ways(rows, from_ldm(rows, dict(unet.config), dict(vae.config), te2))
    write(rows, "sdxl_ldm.txt")


def tiny_sdxl(conv):
    import json
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    easel = os.environ.get("EASEL_BIN") or os.path.join(ROOT, "build", "easel")
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "m")
        subprocess.run([easel, "make-model", "--arch", "tiny-sdxl", "--dtype", "f32", "--seed",
                        "3", "--out", d], check=True)
        ld = lambda c, f: load_file(os.path.join(d, c, f))
        cfg = lambda c: json.load(open(os.path.join(d, c, "config.json")))
        unet = ld("unet", "diffusion_pytorch_model.safetensors")
        vae = ld("vae", "diffusion_pytorch_model.safetensors")
        te1 = te_prefix(ld("text_encoder", "model.safetensors"))
        te2 = te_prefix(ld("text_encoder_2", "model.safetensors"))
        with torch.device("meta"):
            te2_model = CLIPTextModelWithProjection(CLIPTextConfig(**cfg("text_encoder_2")))
        vae_cfg = cfg("vae")
        unet_cfg = cfg("unet")
    rows = to_ldm(conv, unet, vae, te1, te2)
    check_both_ways(rows, from_ldm(rows, unet_cfg, vae_cfg, te2_model))
    write(rows, "tiny_sdxl_ldm.txt")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    conv = load_script(sys.argv[1])
    full_sdxl(conv)
    tiny_sdxl(conv)
