#!/usr/bin/env python3
"""Fixtures for tests/test_models.c: tiny random CLIP text encoders, UNets and
VAE decoders built with transformers/diffusers — SD1.x-like, SD2-like (OpenCLIP
ViT-H layout, linear projections, per-level heads, 1024-wide cross-attention,
upcast_attention), LCM (time_cond_proj_dim) and SDXL-like (CLIP-L penultimate,
OpenCLIP ViT-bigG penultimate + projected pooled output, text_time UNet with
time ids, the SDXL VAE scaling factor) — with float64 reference outputs.

Each fixture is a folder laid out as a diffusers pipeline's component
subfolder, so that the C tests load it through the loader
(sd_checkpoint_open_component):
    <name>/config.json                         the component's config
    <name>/model.safetensors                   text encoders (transformers names)
    <name>/diffusion_pytorch_model.safetensors UNets and VAEs (diffusers names)
    <name>/io.safetensors                      inputs (in.*) and float64 references (out.*), NHWC
Weights are rounded to f16 and stored as F16, so the C side also exercises the
conversion. Run by hand with the tools venv:
    .venv-tools/bin/python tools/fixtures_models.py [outdir]
"""
import json
import os
import shutil
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


def save(name, weights, weights_file, io, config):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    save_file(weights, os.path.join(d, weights_file))
    save_file(io, os.path.join(d, "io.safetensors"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {len(weights)} weights, {len(io)} in/out tensors, {size / 1e6:.2f} MB")


def text_ids(vocab, seed, pad):
    """Two rows: random tokens with BOS first and EOS (vocab-1) after them,
    then padding: `pad` (EOS for CLIP-L, 0 = OpenCLIP's '!' for the others)."""
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(1, vocab - 2, (2, 77), generator=g)
    for row, n in ((0, 76), (1, 9)):  # a full row and a short prompt
        ids[row, 0] = vocab - 2
        ids[row, n] = vocab - 1
        ids[row, n + 1:] = pad
    return ids


def clip_config(cls, vocab, hidden, layers, heads, inter, act, proj=None, eos=None):
    from transformers import CLIPTextConfig
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
              hidden_act=act, layer_norm_eps=1e-5, attn_implementation="eager")
    if proj:
        kw["projection_dim"] = proj
    if eos is not None:
        kw["eos_token_id"] = eos
    cfg = CLIPTextConfig(**kw)
    cfg.architectures = [cls]
    return cfg


def clip_state(m, drop_layer=None):
    """transformers names; checkpoints (and transformers < 5) say "text_model.<...>"."""
    t = {}
    for k, v in weights_f16(m).items():
        k = k if k.startswith(("text_model.", "text_projection")) else "text_model." + k
        if drop_layer is not None and f".layers.{drop_layer}." in k:
            continue
        t[k] = v
    return t


def make_clip(name, seed, act, layers, hidden, heads, inter, vocab):
    from transformers import CLIPTextModel
    cfg = clip_config("CLIPTextModel", vocab, hidden, layers, heads, inter, act)
    torch.manual_seed(seed)
    m = CLIPTextModel(cfg).eval()
    randomise(m, seed)
    t = clip_state(m)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab, (2, 77), generator=g)
    ids[0, 0] = 0
    ids[1, 10:] = vocab - 1  # padding-like tail
    m = m.double()
    with torch.no_grad():
        o = m(input_ids=ids, output_hidden_states=True)
        tm = getattr(m, "text_model", m)
        skip1 = tm.final_layer_norm(o.hidden_states[-2])
    io = {"in.ids": ids.to(torch.int32), "out.last_hidden_state": o.last_hidden_state.float(),
          "out.skip1": skip1.float()}
    save(name, t, "model.safetensors", io, cfg.to_dict())


def make_clip_sd2(name, seed):
    """OpenCLIP ViT-H's text tower as SD2 uses it, at tiny width: GELU, 64-wide
    heads, and the penultimate layer: the model has 4 layers, the folder keeps 3
    (as diffusers' SD2 folders keep 23 of 24), so the folder's last_hidden_state
    (final layer norm applied) must equal final_layer_norm(hidden_states[-2]) of
    the full model. Pads with 0 ('!'), as SD2's tokenizer."""
    from transformers import CLIPTextModel
    vocab = 500
    full = clip_config("CLIPTextModel", vocab, 128, 4, 2, 256, "gelu")
    torch.manual_seed(seed)
    m = CLIPTextModel(full).eval()
    randomise(m, seed)
    t = clip_state(m, drop_layer=3)
    ids = text_ids(vocab, seed, 0)
    m = m.double()
    with torch.no_grad():
        o = m(input_ids=ids, output_hidden_states=True)
        ln = getattr(m, "text_model", m).final_layer_norm
        penult, skip1 = ln(o.hidden_states[-2]), ln(o.hidden_states[-3])
    cfg = full.to_dict()
    cfg["num_hidden_layers"] = 3
    io = {"in.ids": ids.to(torch.int32), "out.last_hidden_state": penult.float(),
          "out.skip1": skip1.float()}
    save(name, t, "model.safetensors", io, cfg)


def make_clip_xl(name, seed, cls, act, layers, hidden, heads, inter, pad, proj=None, eos=None):
    """SDXL's reading of a text encoder: hidden_states[-2] and [-3] without the final
    layer norm; with a projection (ViT-bigG) also text_embeds, the pooled EOS
    state through text_projection."""
    import transformers
    vocab = 500
    cfg = clip_config(cls, vocab, hidden, layers, heads, inter, act, proj, eos)
    torch.manual_seed(seed)
    m = getattr(transformers, cls)(cfg).eval()
    randomise(m, seed)
    t = clip_state(m)
    ids = text_ids(vocab, seed, pad)
    m = m.double()
    with torch.no_grad():
        o = m(input_ids=ids, output_hidden_states=True)
    io = {"in.ids": ids.to(torch.int32), "out.penultimate": o.hidden_states[-2].float(),
          "out.skip2": o.hidden_states[-3].float()}
    if proj:
        io["out.text_embeds"] = o.text_embeds.float()
    save(name, t, "model.safetensors", io, cfg.to_dict())


def make_unet(name, seed, h, w, batch, text_time=False, cond=False, **kw):
    from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel
    torch.manual_seed(seed)
    m = UNet2DConditionModel(**kw).eval()
    randomise(m, seed)
    t = weights_f16(m)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, kw["in_channels"], h, w, generator=g, dtype=torch.float64)
    ctx = torch.randn(batch, 77, kw["cross_attention_dim"], generator=g, dtype=torch.float64)
    ts = torch.tensor([981.0, 1.0, 500.0][:batch], dtype=torch.float64)
    io = {}
    extra = {}
    if cond:  # the LCM pipelines' guidance embedding of w = guidance_scale - 1
        ws = torch.tensor([7.0, 2.5][:batch])
        emb = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
            None, ws, embedding_dim=kw["time_cond_proj_dim"])
        io["in.w"] = ws.float()
        io["in.cond"] = emb.float()
        extra["timestep_cond"] = emb.double()
    if text_time:  # SDXL: pooled text embedding + (orig h, w, crop top, left, target h, w)
        pooled = kw["projection_class_embeddings_input_dim"] - 6 * kw["addition_time_embed_dim"]
        te = torch.randn(batch, pooled, generator=g, dtype=torch.float64)
        tid = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0],
                            [768.0, 1344.0, 16.0, 32.0, 832.0, 1216.0]][:batch], dtype=torch.float64)
        io["in.text_embeds"] = te.float()
        io["in.time_ids"] = tid.float()
        extra["added_cond_kwargs"] = {"text_embeds": te, "time_ids": tid}
    m = m.double()
    with torch.no_grad():
        y = m(x, ts, encoder_hidden_states=ctx, **extra).sample
    io.update({"in.x": nhwc(x), "in.t": ts.float(), "in.ctx": ctx.float(), "out.y": nhwc(y)})
    save(name, t, "diffusion_pytorch_model.safetensors", io, dict(m.config))


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
    io = {"in.z": nhwc(z), "out.img": nhwc(y)}
    save(name, t, "diffusion_pytorch_model.safetensors", io, dict(m.config))


def main():
    torch.set_num_threads(2)
    make_clip("clip_a", 1, "quick_gelu", 2, 64, 4, 128, 1000)
    make_clip("clip_b", 2, "gelu", 1, 32, 2, 64, 500)
    make_clip_sd2("clip_sd2", 6)
    # SDXL's two encoders: CLIP ViT-L-like (quick GELU, pads with EOS) and
    # OpenCLIP ViT-bigG-like (GELU, 64-wide heads, projection 48 != width 128,
    # legacy eos_token_id 2 = pooled at the largest id, pads with 0)
    make_clip_xl("clip_xl1", 7, "CLIPTextModel", "quick_gelu", 3, 64, 4, 128, pad=499)
    make_clip_xl("clip_xl2", 8, "CLIPTextModelWithProjection", "gelu", 3, 128, 2, 256, pad=0,
                 proj=48, eos=2)
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
    # SD2.x: linear projections, per-level head counts (read from
    # attention_head_dim as diffusers does), 1024-wide cross-attention, upcast_attention
    make_unet("unet_sd2", 9, 8, 8, 2, sample_size=8, in_channels=4, out_channels=4,
              block_out_channels=(16, 32),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              layers_per_block=1, attention_head_dim=(1, 2), cross_attention_dim=1024,
              norm_num_groups=8, use_linear_projection=True, upcast_attention=True)
    # LCM: the guidance embedding through time_embedding.cond_proj
    make_unet("unet_lcm", 10, 8, 8, 2, cond=True, sample_size=8, in_channels=4, out_channels=4,
              block_out_channels=(16, 32),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              layers_per_block=1, attention_head_dim=4, cross_attention_dim=32,
              norm_num_groups=8, time_cond_proj_dim=32)
    # SDXL: no attention at the top level, transformer_layers_per_block per level,
    # text_time (pooled 40 + 6 time ids x 16), batch 2 with different time ids, 9x7
    make_unet("unet_xl", 11, 9, 7, 2, text_time=True, sample_size=8, in_channels=4,
              out_channels=4, block_out_channels=(16, 32, 32),
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              layers_per_block=1, attention_head_dim=(1, 2, 4), transformer_layers_per_block=(1, 2, 3),
              cross_attention_dim=48, norm_num_groups=8, use_linear_projection=True,
              addition_embed_type="text_time", addition_time_embed_dim=16,
              projection_class_embeddings_input_dim=40 + 6 * 16)
    make_vae("vae_a", 5, 5, 4, in_channels=3, out_channels=3,
             down_block_types=("DownEncoderBlock2D",) * 3,
             up_block_types=("UpDecoderBlock2D",) * 3,
             block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4,
             norm_num_groups=8, sample_size=32, scaling_factor=0.18215)
    # SDXL's VAE: the same decoder, scaling factor 0.13025, force_upcast
    make_vae("vae_xl", 12, 6, 5, in_channels=3, out_channels=3,
             down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4,
             block_out_channels=(16, 16, 32, 32), layers_per_block=2, latent_channels=4,
             norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=True)


if __name__ == "__main__":
    main()
