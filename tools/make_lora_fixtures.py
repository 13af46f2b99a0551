"""LoRA fixtures for tests/test_lora.c, made by diffusers + peft on the model
`easel make-model --arch tiny --dtype f32 --seed 0` writes (so its weights
need not be committed):

  peft.safetensors   a PEFT LoRA as diffusers saves it (save_lora_weights with
                     lora_adapter_metadata): UNet attention, feed-forward,
                     proj_in/out, ResNet convs (3x3 LoCon-style), shortcuts,
                     time projections, r=4 alpha=8, with a rank_pattern
                     (attn2.to_k r=8) and an alpha_pattern (ff.net.2 alpha 2);
                     text encoder q/k/v/out and MLP, r=4 alpha=4
  kohya.safetensors  a kohya/A1111 LoRA (lora_unet_*, lora_te_*, .lora_down /
                     .lora_up / .alpha, f16), LoCon convs included
  merged_<set>.safetensors  diffusers' fused weights (load_lora_weights,
                     set_adapters, fuse_lora, unload_lora_weights) for each set
                     below: every weight that changed, keys "unet.<name>" /
                     "text_encoder.<name>", as a 1-D f32 sample of every
                     SAMPLE-th value of the flattened PyTorch tensor (from 0;
                     the whole tensors would be 11 MB)
  <case>.bin         txt2img with the LoRAs loaded (not fused) at the case's
                     weights: final latents (f32, NCHW 1x4x8x8), then RGB bytes
  cases.json         the sets and cases

SDXL (xl_*, on `easel make-model --arch tiny-sdxl --dtype f32 --seed 0`, loaded
by StableDiffusionXLPipeline.from_pretrained, read through
StableDiffusionXLPipeline.load_lora_weights):

  xl_peft.safetensors   PEFT as diffusers saves an SDXL LoRA (unet, text_encoder,
                     text_encoder_2 with each network's adapter metadata):
                     the UNet targets above (r=4 alpha=8, attn2.to_k r=8),
                     CLIP-L r=4 alpha=4, bigG r=4 alpha=8 with fc2 alpha 2
  xl_kohya.safetensors  kohya as sd-scripts writes SDXL LoRAs: the UNet's layers
                     by their LDM (SGM) names (lora_unet_input_blocks_4_1_...,
                     in_layers_2, emb_layers_1, skip_connection, op), taken
                     from tests/fixtures/names/tiny_sdxl_ldm.txt (diffusers'
                     own converters' mapping), lora_te1_/lora_te2_, f16
  xl_merged_<set>.safetensors, xl_<case>.bin, xl_cases.json  as above; merged
                     keys "unet.", "text_encoder.", "text_encoder_2."

Usage: make_lora_fixtures.py [sd|xl] (default both).
Needs the easel binary ($EASEL_BIN or build*/easel) and peft in .venv-tools.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
import transformers.integrations.peft as _tf_peft

# transformers 5.24 asks for peft >= 0.22, which is not released (0.21.2 is the newest on
# PyPI): its text-encoder adapter calls work with 0.21.2 for plain LoRA, so the gate is lifted
# here (and only here); diffusers' own LoRA code is unchanged.
_tf_peft.check_peft_version = lambda min_version: None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_pipeline import CLASSES, easel_bin, load_models, write_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "lora")
PROMPT = "a cozy living room with a green sofa, watercolor"
NEGATIVE = "blurry, low quality"
SAMPLE = 13

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                "ff.net.2", "conv1", "conv2", "conv_shortcut", "time_emb_proj"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

SETS = {
    "peft": [("peft", 0.8)],
    "kohya": [("kohya", 0.6)],
    "both": [("peft", 0.8), ("kohya", -0.5)],
}

CASES = [
    dict(name="peft_euler_a", loras=[("peft", 0.8)], sampler="euler_a", guidance=7.5),
    dict(name="kohya_ddim", loras=[("kohya", 0.6)], sampler="ddim", guidance=5.0),
    dict(name="both_euler", loras=[("peft", 0.8), ("kohya", -0.5)], sampler="euler",
         guidance=7.5),
    # the few-step recipes: LCM-LoRA (LCMScheduler, guidance 1), TCD-LoRA (TCDScheduler,
    # gamma 0.3), Hyper-SD (DDIM with trailing timesteps)
    dict(name="lcm_lora", loras=[("kohya", 1.0)], sampler="lcm", guidance=1.0),
    dict(name="tcd_lora", loras=[("peft", 1.0)], sampler="tcd", guidance=1.0, eta=0.3),
    dict(name="hyper_ddim_trailing", loras=[("kohya", 0.9)], sampler="ddim", guidance=1.0,
         schedule="trailing"),
]
for c in CASES:
    c.setdefault("eta", 0.0)
    c.setdefault("schedule", "default")
    c.update(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, seed=4321, width=64, height=64)


def randomize(model, seed):
    """LoRA factors with real values (PEFT starts lora_B at zero): down ~ U(+-1/sqrt(fan_in)),
    up ~ U(+-0.5/sqrt(r))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in sorted(model.named_parameters()):
            if "lora_A" in n:
                b = 1.0 / np.sqrt(p[0].numel())
            elif "lora_B" in n:
                b = 0.5 / np.sqrt(p.shape[1])
            else:
                continue
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * b)


def make_peft(d, tmp):
    unet, _, te, _ = load_models(d)
    ucfg = LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS,
                      rank_pattern={"attn2.to_k": 8}, alpha_pattern={"ff.net.2": 2.0},
                      init_lora_weights=False)
    tcfg = LoraConfig(r=4, lora_alpha=4, target_modules=TEXT_TARGETS, init_lora_weights=False)
    unet.add_adapter(ucfg)
    te.add_adapter(tcfg)
    randomize(unet, 1)
    randomize(te, 2)
    StableDiffusionPipeline.save_lora_weights(
        tmp, unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(te),
        unet_lora_adapter_metadata=ucfg.to_dict(), text_encoder_lora_adapter_metadata=tcfg.to_dict(),
        weight_name="peft.safetensors")
    os.replace(os.path.join(tmp, "peft.safetensors"), os.path.join(OUT, "peft.safetensors"))


def make_kohya(d):
    """kohya's layout by hand: lora_unet_<diffusers path with _>, f16 factors, an alpha each
    (2 for most: scale 0.5; 8 for the convs: scale 2)."""
    unet, _, te, _ = load_models(d)
    rng = np.random.default_rng(3)
    sd = {}
    for prefix, model, targets in (("lora_unet_", unet, UNET_TARGETS),
                                   ("lora_te_", te, TEXT_TARGETS)):
        for name, mod in model.named_modules():
            if not any(name.endswith(t) for t in targets):
                continue
            if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            key = prefix + ("text_model." if prefix == "lora_te_" and
                            not name.startswith("text_model.") else "") + name
            key = key[:len(prefix)] + key[len(prefix):].replace(".", "_")
            r = 4
            w = mod.weight
            fan_in = w[0].numel()
            if w.ndim == 4:  # LoCon: down is the conv, up a 1x1
                down = rng.uniform(-1, 1, (r, w.shape[1], w.shape[2], w.shape[3])) / np.sqrt(fan_in)
                up = rng.uniform(-1, 1, (w.shape[0], r, 1, 1)) * 0.5 / np.sqrt(r)
                alpha = 8.0
            else:
                down = rng.uniform(-1, 1, (r, w.shape[1])) / np.sqrt(fan_in)
                up = rng.uniform(-1, 1, (w.shape[0], r)) * 0.5 / np.sqrt(r)
                alpha = 2.0
            sd[key + ".lora_down.weight"] = torch.tensor(down, dtype=torch.float16)
            sd[key + ".lora_up.weight"] = torch.tensor(up, dtype=torch.float16)
            sd[key + ".alpha"] = torch.tensor(alpha, dtype=torch.float16)
    save_file(sd, os.path.join(OUT, "kohya.safetensors"),
              metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4",
                        "ss_base_model_version": "sd_v1", "ss_output_name": "tiny-kohya",
                        "ss_tag_frequency": json.dumps({"1_room": {"green sofa": 9, "cozy": 4,
                                                                     "watercolor": 7}})})


def pipeline(d, tok, sched):
    unet, vae, te, sched_cfg = load_models(d)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=CLASSES[sched].from_config(sched_cfg),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, sched_cfg


def load_set(pipe, loras):
    names = []
    for i, (f, w) in enumerate(loras):
        n = f"{f}{i}"
        pipe.load_lora_weights(os.path.join(OUT, f + ".safetensors"), adapter_name=n)
        names.append(n)
    pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    return names


def te_name(k):
    return k if k.startswith("text_model.") else "text_model." + k


def merged(d, tok, set_name, loras):
    pipe, _ = pipeline(d, tok, "euler")
    base = {"unet." + k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base.update({"text_encoder." + te_name(k): v.clone()
                 for k, v in pipe.text_encoder.state_dict().items()})
    names = load_set(pipe, loras)
    pipe.fuse_lora(lora_scale=1.0, adapter_names=names)
    pipe.unload_lora_weights()
    now = {"unet." + k: v for k, v in pipe.unet.state_dict().items()}
    now.update({"text_encoder." + te_name(k): v for k, v in pipe.text_encoder.state_dict().items()})
    assert now.keys() == base.keys(), set(now) ^ set(base)
    changed = {k: v.float().flatten()[::SAMPLE].contiguous() for k, v in now.items()
               if not torch.equal(v, base[k])}
    save_file(changed, os.path.join(OUT, f"merged_{set_name}.safetensors"))
    print(f"merged_{set_name}: {len(changed)} weights changed", file=sys.stderr)
    return len(changed)


def run_case(d, tok, c):
    pipe, sched_cfg = pipeline(d, tok, c["sampler"])
    kw = {"timestep_spacing": "trailing"} if c["schedule"] == "trailing" else {}
    pipe.scheduler = CLASSES[c["sampler"]].from_config(sched_cfg, **kw)
    load_set(pipe, c["loras"])
    g = torch.Generator("cpu").manual_seed(c["seed"])
    extra = {"eta": c["eta"]} if c["sampler"] in ("ddim", "tcd") else {}
    with torch.no_grad():
        lat = pipe(c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"],
                   width=c["width"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                   generator=g, output_type="latent", **extra).images
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    rgb = (img * 255).round().astype(np.uint8)
    with open(os.path.join(OUT, c["name"] + ".bin"), "wb") as f:
        f.write(lat.float().numpy().astype("<f4").tobytes() + rgb.tobytes())
    print(f"{c['name']}: latents |x| mean {np.abs(lat.numpy()).mean():.4f}", file=sys.stderr)


# ---- SDXL ----

XL_SETS = {
    "peft": [("xl_peft", 0.8)],
    "kohya": [("xl_kohya", 0.7)],
    "both": [("xl_peft", 0.6), ("xl_kohya", -0.4)],
}
XL_CASES = [
    dict(name="xl_peft_euler", loras=[("xl_peft", 0.8)], sampler="euler", guidance=5.0),
    dict(name="xl_kohya_euler_a", loras=[("xl_kohya", 0.7)], sampler="euler_a", guidance=5.0),
    dict(name="xl_both_euler", loras=[("xl_peft", 0.6), ("xl_kohya", -0.4)], sampler="euler",
         guidance=5.0),
]
for c in XL_CASES:
    c.update(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, seed=777, width=64, height=64,
             eta=0.0, schedule="default")
XL_TEXT_TARGETS = TEXT_TARGETS
XL_UNET_TARGETS = [t for t in UNET_TARGETS if t != "conv1"]  # kohya's file has every conv
XL_SAMPLE = 61  # the merged weights: every 61st value (the SDXL files are bigger)


def xl_pipe(d):
    pipe = StableDiffusionXLPipeline.from_pretrained(d, torch_dtype=torch.float32,
                                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def xl_make_peft(d, tmp):
    pipe = xl_pipe(d)
    ucfg = LoraConfig(r=4, lora_alpha=8, target_modules=XL_UNET_TARGETS,
                      rank_pattern={"attn2.to_k": 8}, init_lora_weights=False)
    t1 = LoraConfig(r=4, lora_alpha=4, target_modules=XL_TEXT_TARGETS, init_lora_weights=False)
    t2 = LoraConfig(r=4, lora_alpha=8, target_modules=XL_TEXT_TARGETS,
                    alpha_pattern={"fc2": 2.0}, init_lora_weights=False)
    pipe.unet.add_adapter(ucfg)
    pipe.text_encoder.add_adapter(t1)
    pipe.text_encoder_2.add_adapter(t2)
    randomize(pipe.unet, 11)
    randomize(pipe.text_encoder, 12)
    randomize(pipe.text_encoder_2, 13)
    half = lambda m: {k: v.half() for k, v in get_peft_model_state_dict(m).items()}  # noqa: E731
    StableDiffusionXLPipeline.save_lora_weights(  # f16 factors, as most published LoRAs
        tmp, unet_lora_layers=half(pipe.unet), text_encoder_lora_layers=half(pipe.text_encoder),
        text_encoder_2_lora_layers=half(pipe.text_encoder_2),
        unet_lora_adapter_metadata=ucfg.to_dict(), text_encoder_lora_adapter_metadata=t1.to_dict(),
        text_encoder_2_lora_adapter_metadata=t2.to_dict(), weight_name="xl_peft.safetensors")
    os.replace(os.path.join(tmp, "xl_peft.safetensors"), os.path.join(OUT, "xl_peft.safetensors"))


def xl_ldm_names():
    """diffusers UNet module -> its SGM module path, from diffusers' converters' table."""
    m = {}
    with open(os.path.join(ROOT, "tests", "fixtures", "names", "tiny_sdxl_ldm.txt")) as f:
        for line in f:
            ldm, comp, name = line.split()[:3]
            if comp == "unet" and name.endswith(".weight"):
                assert ldm.startswith("model.diffusion_model.") and ldm.endswith(".weight"), ldm
                m[name[:-7]] = ldm[len("model.diffusion_model."):-7]
    return m


def xl_make_kohya(d):
    """sd-scripts' SDXL layout by hand: f16 factors, an alpha each (2 for linears: scale 0.5;
    8 for convs: scale 2), the UNet (attention, feed-forward, projections; LoCon: ResNet convs,
    shortcuts, time projections, down/upsamplers) by SGM names."""
    pipe = xl_pipe(d)
    ldm = xl_ldm_names()
    rng = np.random.default_rng(5)
    sd = {}
    unet_targets = UNET_TARGETS + ["downsamplers.0.conv", "upsamplers.0.conv"]
    for prefix, model, targets in (("lora_unet_", pipe.unet, unet_targets),
                                   ("lora_te1_", pipe.text_encoder, TEXT_TARGETS),
                                   ("lora_te2_", pipe.text_encoder_2, TEXT_TARGETS)):
        for name, mod in model.named_modules():
            if not any(name.endswith(t) for t in targets):
                continue
            if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            path = ldm[name] if prefix == "lora_unet_" else (
                name if name.startswith("text_model.") else "text_model." + name)
            key = prefix + path.replace(".", "_")
            r = 4
            w = mod.weight
            fan_in = w[0].numel()
            if w.ndim == 4:
                down = rng.uniform(-1, 1, (r, w.shape[1], w.shape[2], w.shape[3])) / np.sqrt(fan_in)
                up = rng.uniform(-1, 1, (w.shape[0], r, 1, 1)) * 0.5 / np.sqrt(r)
                alpha = 8.0
            else:
                down = rng.uniform(-1, 1, (r, w.shape[1])) / np.sqrt(fan_in)
                up = rng.uniform(-1, 1, (w.shape[0], r)) * 0.5 / np.sqrt(r)
                alpha = 2.0
            assert key + ".lora_down.weight" not in sd, key
            sd[key + ".lora_down.weight"] = torch.tensor(down, dtype=torch.float16)
            sd[key + ".lora_up.weight"] = torch.tensor(up, dtype=torch.float16)
            sd[key + ".alpha"] = torch.tensor(alpha, dtype=torch.float16)
    save_file(sd, os.path.join(OUT, "xl_kohya.safetensors"),
              metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4",
                        "ss_base_model_version": "sdxl_base_v1-0",
                        "ss_output_name": "tiny-xl-kohya"})
    return len(sd) // 3


def xl_state(pipe):
    st = {"unet." + k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for part in ("text_encoder", "text_encoder_2"):
        st.update({part + "." + te_name(k) if not k.startswith("text_projection") else
                   part + "." + k: v.clone()
                   for k, v in getattr(pipe, part).state_dict().items()})
    return st


def xl_merged(d, set_name, loras, modules):
    pipe = xl_pipe(d)
    base = xl_state(pipe)
    # (transformers reports the first adapter's factors MISSING while it loads the second one's
    # file; they are kept: the "both" set is the linear sum of the single ones, checked once
    # by hand to 2e-7 rel)
    names = load_set(pipe, loras)
    pipe.fuse_lora(lora_scale=1.0, adapter_names=names)
    pipe.unload_lora_weights()
    now = xl_state(pipe)
    assert now.keys() == base.keys(), set(now) ^ set(base)
    changed = {k: v.float().flatten()[::XL_SAMPLE].contiguous() for k, v in now.items()
               if not torch.equal(v, base[k])}
    # every module of every file adapted a weight (diffusers drops none of them)
    assert len(changed) == max(modules[f] for f, _ in loras), (len(changed), modules)
    save_file(changed, os.path.join(OUT, f"xl_merged_{set_name}.safetensors"))
    parts = {p: sum(k.startswith(p + ".") for k in changed)
             for p in ("unet", "text_encoder", "text_encoder_2")}
    print(f"xl_merged_{set_name}: {len(changed)} weights changed {parts}", file=sys.stderr)
    return len(changed), parts


def xl_run_case(d, c):
    pipe = xl_pipe(d)
    sched_cfg = dict(pipe.scheduler.config)
    pipe.scheduler = CLASSES[c["sampler"]].from_config(sched_cfg)
    load_set(pipe, c["loras"])
    g = torch.Generator("cpu").manual_seed(c["seed"])
    with torch.no_grad():
        lat = pipe(c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"],
                   width=c["width"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                   generator=g, output_type="latent").images
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    rgb = (img * 255).round().astype(np.uint8)
    with open(os.path.join(OUT, c["name"] + ".bin"), "wb") as f:
        f.write(lat.float().numpy().astype("<f4").tobytes() + rgb.tobytes())
    print(f"{c['name']}: latents |x| mean {np.abs(lat.numpy()).mean():.4f}", file=sys.stderr)


def main_xl():
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "tiny-sdxl")
        subprocess.run([easel_bin(), "make-model", "--arch", "tiny-sdxl", "--dtype", "f32",
                        "--seed", "0", "--out", d], check=True)
        xl_make_peft(d, tmp)
        n_kohya = xl_make_kohya(d)
        from safetensors import safe_open
        with safe_open(os.path.join(OUT, "xl_peft.safetensors"), "pt") as f:
            n_peft = sum(k.endswith("lora_A.weight") for k in f.keys())
        modules = {"xl_peft": n_peft, "xl_kohya": n_kohya}
        counts = {s: xl_merged(d, s, l, modules) for s, l in XL_SETS.items()}
        for c in XL_CASES:
            xl_run_case(d, c)
    cases = [dict(c, loras=[dict(name=f, weight=w) for f, w in c["loras"]]) for c in XL_CASES]
    sets = {s: dict(loras=[dict(name=f, weight=w) for f, w in l], changed=counts[s][0],
                    parts=counts[s][1])
            for s, l in XL_SETS.items()}
    with open(os.path.join(OUT, "xl_cases.json"), "w") as f:
        json.dump(dict(model="easel make-model --arch tiny-sdxl --dtype f32 --seed 0",
                       sample=XL_SAMPLE, modules=modules, sets=sets, cases=cases), f, indent=1)


def main_sd():
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "tiny")
        subprocess.run([easel_bin(), "make-model", "--arch", "tiny", "--dtype", "f32", "--seed",
                        "0", "--out", d], check=True)
        tok = write_tokenizer(os.path.join(tmp, "tok"))
        make_peft(d, tmp)
        make_kohya(d)
        counts = {s: merged(d, tok, s, l) for s, l in SETS.items()}
        for c in CASES:
            run_case(d, tok, c)
    cases = [dict(c, loras=[dict(name=f, weight=w) for f, w in c["loras"]]) for c in CASES]
    sets = {s: dict(loras=[dict(name=f, weight=w) for f, w in l], changed=counts[s])
            for s, l in SETS.items()}
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(dict(model="easel make-model --arch tiny --dtype f32 --seed 0", sample=SAMPLE,
                       sets=sets,
                       cases=cases), f, indent=1)


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    which = sys.argv[1:] or ["sd", "xl"]
    if "sd" in which:
        main_sd()
    if "xl" in which:
        main_xl()


if __name__ == "__main__":
    main()
