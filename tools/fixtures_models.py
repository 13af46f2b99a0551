#!/usr/bin/env python3
"""Fixtures for tests/test_models.c: tiny random CLIP text encoders, UNets and
a VAE decoder built with transformers/diffusers, their weights (diffusers
names, rounded to f16 and stored as F16 so the C side also exercises the
conversion), inputs and float64 reference outputs (NHWC) as safetensors, plus
each model's config.json. Run by hand with the tools venv:
    .venv-tools/bin/python tools/fixtures_models.py [outdir]
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models")


def randomise(model, seed):
    """Every parameter random and non-trivial (diffusers zero-inits some), then
    rounded to f16-representable values so the F16 file holds them exactly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                std = 1.0 / fan_in ** 0.5
                if "embedding" in name:
                    std = 0.5
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            p.copy_(p.to(torch.float16).to(p.dtype))


def weights_f16(model, keep=None):
    sd = {}
    for k, v in model.state_dict().items():
        if keep and not keep(k):
            continue
        if not v.is_floating_point():
            continue
        sd[k] = v.detach().to(torch.float16).contiguous()
    return sd


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous().float()


def save(name, tensors, config):
    os.makedirs(OUT, exist_ok=True)
    save_file(tensors, os.path.join(OUT, name + ".safetensors"))
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    size = os.path.getsize(os.path.join(OUT, name + ".safetensors"))
    print(f"{name}: {len(tensors)} tensors, {size / 1e6:.2f} MB")


def make_clip(name, seed, act, layers, hidden, heads, inter, vocab):
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
                         attn_implementation="eager")
    torch.manual_seed(seed)
    m = CLIPTextModel(cfg).eval()
    randomise(m, seed)
    # checkpoints (and transformers < 5) name these "text_model.<...>"
    t = {k if k.startswith("text_model.") else "text_model." + k: v
         for k, v in weights_f16(m).items()}
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab, (2, 77), generator=g)
    ids[0, 0] = 0
    ids[1, 10:] = vocab - 1  # padding-like tail
    m = m.double()
    with torch.no_grad():
        o = m(input_ids=ids, output_hidden_states=True)
        tm = getattr(m, "text_model", m)
        skip1 = tm.final_layer_norm(o.hidden_states[-2])
    t["in.ids"] = ids.to(torch.int32)
    t["out.last_hidden_state"] = o.last_hidden_state.float()
    t["out.skip1"] = skip1.float()
    save(name, t, cfg.to_dict())


def make_unet(name, seed, h, w, batch, **kw):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    m = UNet2DConditionModel(**kw).eval()
    randomise(m, seed)
    t = weights_f16(m)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, kw["in_channels"], h, w, generator=g, dtype=torch.float64)
    ctx = torch.randn(batch, 77, kw["cross_attention_dim"], generator=g, dtype=torch.float64)
    ts = torch.tensor([981.0, 1.0, 500.0][:batch], dtype=torch.float64)
    m = m.double()
    inter = {}
    m.time_embedding.register_forward_hook(lambda mod, i, o: inter.__setitem__("temb", o))
    m.down_blocks[0].register_forward_hook(lambda mod, i, o: inter.__setitem__("down0", o[0]))
    m.mid_block.register_forward_hook(lambda mod, i, o: inter.__setitem__("mid", o))
    with torch.no_grad():
        y = m(x, ts, encoder_hidden_states=ctx).sample
    t["in.x"] = nhwc(x)
    t["in.t"] = ts.float()
    t["in.ctx"] = ctx.float()
    t["out.temb"] = inter["temb"].float()
    t["out.down0"] = nhwc(inter["down0"])
    t["out.mid"] = nhwc(inter["mid"])
    t["out.y"] = nhwc(y)
    save(name, t, dict(m.config))


def make_vae(name, seed, h, w, **kw):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    m = AutoencoderKL(**kw).eval()
    randomise(m, seed)
    t = weights_f16(m, keep=lambda k: k.startswith("decoder.") or k.startswith("post_quant"))
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(1, kw["latent_channels"], h, w, generator=g, dtype=torch.float64)
    m = m.double()
    with torch.no_grad():
        y = m.decode(z / m.config.scaling_factor).sample
    t["in.z"] = nhwc(z)
    t["out.img"] = nhwc(y)
    save(name, t, dict(m.config))


def main():
    torch.set_num_threads(2)
    make_clip("clip_a", 1, "quick_gelu", 2, 64, 4, 128, 1000)
    make_clip("clip_b", 2, "gelu", 1, 32, 2, 64, 500)
    # SD1.x-like block layout, 8x8, batch 2, heads given as attention_head_dim (int)
    make_unet("unet_a", 3, 8, 8, 2, sample_size=8, in_channels=4, out_channels=4,
              block_out_channels=(32, 64),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              layers_per_block=1, attention_head_dim=4, cross_attention_dim=32,
              norm_num_groups=8)
    # three levels, odd latent size 9x7 (two upsamplers to the skip size),
    # per-level heads, linear projections (SD2 style), 2 layers per block
    make_unet("unet_b", 4, 9, 7, 1, sample_size=8, in_channels=4, out_channels=4,
              block_out_channels=(16, 32, 32),
              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
              layers_per_block=2, attention_head_dim=(2, 4, 4), cross_attention_dim=24,
              norm_num_groups=8, use_linear_projection=True)
    make_vae("vae_a", 5, 5, 4, in_channels=3, out_channels=3,
             down_block_types=("DownEncoderBlock2D",) * 3,
             up_block_types=("UpDecoderBlock2D",) * 3,
             block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4,
             norm_num_groups=8, sample_size=32, scaling_factor=0.18215)


if __name__ == "__main__":
    main()
