#!/usr/bin/env python3
"""Fixtures for the VAE encoder test in tests/test_models.c: tiny random
AutoencoderKLs (diffusers), every weight random (rounded to f16 and stored as
F16, as tools/fixtures_models.py does), with float64 references of
AutoencoderKL.encode: the moments quant_conv(encoder(x)) (mean then logvar,
channels last) for an input in [-1, 1].

    vae_enc    3 levels, 1 layer per block, input 20x14: 14 -> 7 -> 3 shows
               Downsample2D's (0, 1, 0, 1) padding (symmetric padding gives 4)
    vae_enc4   SD's 4 levels, 2 layers per block, 32x24, latent 4, scaling 0.18215

Run by hand with the tools venv:
    .venv-tools/bin/python tools/fixtures_vae_encoder.py [outdir]
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_models import randomise, weights_f16, nhwc  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models")


def make(name, seed, h, w, **kw):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    m = AutoencoderKL(**kw).eval()
    randomise(m, seed)
    t = weights_f16(m)  # the whole AutoencoderKL: encoder, quant_conv, decoder
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(1, kw["in_channels"], h, w, generator=g, dtype=torch.float64) * 2 - 1
    m = m.double()
    with torch.no_grad():
        moments = m.quant_conv(m.encoder(x))
        dist = m.encode(x).latent_dist
        assert torch.equal(dist.mean, moments[:, :kw["latent_channels"]])
    io = {"in.img": nhwc(x), "out.moments": nhwc(moments)}
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    save_file(t, os.path.join(d, "diffusion_pytorch_model.safetensors"))
    save_file(io, os.path.join(d, "io.safetensors"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(dict(m.config), f, indent=1, sort_keys=True)
    print(f"{name}: {len(t)} weights, moments {tuple(moments.shape)}, "
          f"|mean| {moments[:, :4].abs().mean():.3f}")


def main():
    torch.set_num_threads(2)
    make("vae_enc", 21, 20, 14, in_channels=3, out_channels=3,
         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
         block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4,
         norm_num_groups=8, sample_size=32, scaling_factor=0.18215)
    make("vae_enc4", 22, 32, 24, in_channels=3, out_channels=3,
         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
         block_out_channels=(16, 16, 32, 32), layers_per_block=2, latent_channels=4,
         norm_num_groups=8, sample_size=32, scaling_factor=0.18215)


if __name__ == "__main__":
    main()
