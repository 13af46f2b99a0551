"""Reference TAESD runs for tests/test_taesd.c, from diffusers' AutoencoderTiny.

1. A small random AutoencoderTiny (16 channels, the released block layout
   (1,3,3,3)/(3,3,3,1), 4 latent channels; weights uniform with std
   1/sqrt(fan_in), biases uniform +-0.1, torch seed 0), written twice:
   model16/ by diffusers' save_pretrained (the diffusers folder layout), and
   orig16/taesd_decoder.safetensors + taesd_encoder.safetensors in the original
   release's layout (nn.Sequential indices; the decoder's shifted by one for its
   Clamp). The original layout is checked here against an independent rewrite of
   the original taesd.py (Clamp, Block, Encoder, Decoder as nn.Sequential):
   same outputs as diffusers, so the mapping the C loader uses is the real one.
   Then decode and encode references on non-square inputs (two decodes, one with
   latents large enough to saturate the tanh clamp): cases.json + *.bin.

2. Previews: diffusers' StableDiffusionPipeline on `easel make-model --arch tiny
   --dtype f32 --seed 0` (whose taesd/ folder is the TAESD), the pipeline
   fixture's prompts and seed, euler and ddim, 4 steps, with callback_on_step_end
   decoding the step's denoised estimate (the scheduler's pred_original_sample,
   recorded from scheduler.step) with AutoencoderTiny: preview.json +
   preview_<sampler>.bin (per step: x0 NCHW f32, then the preview image HWC f32
   in [0, 1] as the pipeline's postprocess computes it).

Needs the easel binary ($EASEL_BIN or build*/easel) and .venv-tools.
"""
import functools
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from torch import nn
from diffusers import AutoencoderTiny, DDIMScheduler, EulerDiscreteScheduler, \
    StableDiffusionPipeline
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures_pipeline as fp  # noqa: E402

ROOT = fp.ROOT
OUT = os.path.join(ROOT, "tests", "fixtures", "taesd")
CH = 16


def make_model():
    torch.manual_seed(0)
    m = AutoencoderTiny(encoder_block_out_channels=(CH,) * 4, decoder_block_out_channels=(CH,) * 4)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".bias"):
                p.uniform_(-0.1, 0.1)
            else:
                fan_in = p[0].numel()
                b = math.sqrt(3.0 / fan_in)
                p.uniform_(-b, b)
    return m.eval()


# ---- the original release's layout, written again from its definition ----

def conv(n_in, n_out, **kw):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(),
                                  conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def OrigEncoder(c, lat):
    return nn.Sequential(
        conv(3, c), Block(c, c),
        conv(c, c, stride=2, bias=False), Block(c, c), Block(c, c), Block(c, c),
        conv(c, c, stride=2, bias=False), Block(c, c), Block(c, c), Block(c, c),
        conv(c, c, stride=2, bias=False), Block(c, c), Block(c, c), Block(c, c),
        conv(c, lat))


def OrigDecoder(c, lat):
    return nn.Sequential(
        Clamp(), conv(lat, c), nn.ReLU(),
        Block(c, c), Block(c, c), Block(c, c), nn.Upsample(scale_factor=2), conv(c, c, bias=False),
        Block(c, c), Block(c, c), Block(c, c), nn.Upsample(scale_factor=2), conv(c, c, bias=False),
        Block(c, c), Block(c, c), Block(c, c), nn.Upsample(scale_factor=2), conv(c, c, bias=False),
        Block(c, c), conv(c, 3))


def original_state_dicts(m):
    """diffusers names -> the release's: encoder.layers.N -> N, decoder.layers.N -> N+1."""
    enc, dec = {}, {}
    for k, v in m.state_dict().items():
        half, _, idx, rest = k.split(".", 3)
        if half == "encoder":
            enc[f"{int(idx)}.{rest}"] = v.contiguous()
        else:
            dec[f"{int(idx) + 1}.{rest}"] = v.contiguous()
    return enc, dec


def write_bin(name, *arrays):
    with open(os.path.join(OUT, name), "wb") as f:
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


def autoencoder_cases(m):
    d = os.path.join(OUT, "model16")
    m.save_pretrained(d, safe_serialization=True)
    enc_sd, dec_sd = original_state_dicts(m)
    o = os.path.join(OUT, "orig16")
    os.makedirs(o, exist_ok=True)
    save_file(dec_sd, os.path.join(o, "taesd_decoder.safetensors"))
    save_file(enc_sd, os.path.join(o, "taesd_encoder.safetensors"))
    oe, od = OrigEncoder(CH, 4).eval(), OrigDecoder(CH, 4).eval()
    oe.load_state_dict(enc_sd, strict=True)
    od.load_state_dict(dec_sd, strict=True)

    g = torch.Generator().manual_seed(7)
    cases = []
    with torch.no_grad():
        for name, shape, scale in [("decode_a", (2, 4, 8, 12), 1.0), ("decode_big", (1, 4, 16, 8), 3.0)]:
            z = torch.randn(shape, generator=g) * scale
            img = m.decode(z).sample
            alt = od(z) * 2 - 1  # the release returns [0, 1]
            assert torch.allclose(img, alt, atol=1e-5, rtol=1e-5), (img - alt).abs().max()
            write_bin(name + ".bin", z.numpy(), img.numpy())
            cases.append(dict(name=name, op="decode", input=list(shape), output=list(img.shape)))
            print(f"{name}: img mean {img.mean():.3f} std {img.std():.3f}", file=sys.stderr)
        x = torch.rand((1, 3, 64, 96), generator=g) * 2 - 1
        lat = m.encode(x).latents
        alt = oe((x + 1) / 2)
        assert torch.allclose(lat, alt, atol=1e-5, rtol=1e-5), (lat - alt).abs().max()
        write_bin("encode_a.bin", x.numpy(), lat.numpy())
        cases.append(dict(name="encode_a", op="encode", input=list(x.shape), output=list(lat.shape)))
        print(f"encode_a: latents std {lat.std():.3f}", file=sys.stderr)
    return cases


# ---- previews through the pipeline ----

def preview_cases(tmp):
    d = os.path.join(tmp, "tiny")
    subprocess.run([fp.easel_bin(), "make-model", "--arch", "tiny", "--dtype", "f32", "--seed", "0",
                    "--out", d], check=True)
    tok = fp.write_tokenizer(os.path.join(tmp, "tok"))
    unet, vae, te, sched_cfg = fp.load_models(d)
    taesd = AutoencoderTiny.from_pretrained(os.path.join(d, "taesd")).eval()
    cases = []
    for sampler, cls in [("euler", EulerDiscreteScheduler), ("ddim", DDIMScheduler)]:
        sched = cls.from_config(sched_cfg)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                       scheduler=sched, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        seen = {}
        inner = sched.step

        @functools.wraps(inner)
        def step(*a, **k):
            out = inner(*a, **{**k, "return_dict": True})
            seen["x0"] = out.pred_original_sample
            return (out.prev_sample, out.pred_original_sample)

        sched.step = step
        frames = []

        def on_step_end(p, i, t, kw):
            x0 = seen["x0"]
            img = taesd.decode(x0 / taesd.config.scaling_factor).sample
            img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
            frames.append((x0.float().numpy(), img.float().numpy()))
            return kw

        c = dict(sampler=sampler, prompt=fp.PROMPT, negative_prompt=fp.NEGATIVE, guidance=7.5,
                 steps=4, seed=1234, width=64, height=64)
        g = torch.Generator("cpu").manual_seed(c["seed"])
        with torch.no_grad():
            pipe(c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"],
                 width=c["width"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                 generator=g, output_type="latent", callback_on_step_end=on_step_end)
        assert len(frames) == c["steps"], len(frames)
        write_bin(f"preview_{sampler}.bin", *[a for fr in frames for a in fr])
        c["name"] = sampler
        cases.append(c)
        print(f"preview {sampler}: {len(frames)} frames, last image mean {frames[-1][1].mean():.3f}",
              file=sys.stderr)
    return cases


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    cases = autoencoder_cases(make_model())
    with tempfile.TemporaryDirectory() as tmp:
        previews = preview_cases(tmp)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(dict(channels=CH, cases=cases), f, indent=1)
    with open(os.path.join(OUT, "preview.json"), "w") as f:
        json.dump(dict(model="easel make-model --arch tiny --dtype f32 --seed 0",
                       latent_shape=[1, 4, 8, 8], image_shape=[64, 64, 3], cases=previews), f,
                  indent=1)


if __name__ == "__main__":
    main()
