"""Makes stable-diffusion.cpp accept easel's single-file SD1.5 checkpoint.

`easel make-model --arch sd15 --out X.safetensors` writes what txt2img uses:
UNet, text encoder and VAE *decoder*. stable-diffusion.cpp always builds the
full AutoencoderKL and refuses a file without first_stage_model.encoder.* and
first_stage_model.quant_conv.*. This copies the file and adds those tensors
(random, same dtype; txt2img never runs them), so every weight that txt2img
does use is byte-for-byte the one easel runs.

  python sdcpp_ckpt.py IN.safetensors OUT.safetensors
"""

import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

CH, MULT, NRB, ZC = 128, (1, 2, 4, 4), 2, 4


def encoder_shapes():
    t = {}

    def conv(n, co, ci, k):
        t[n + ".weight"] = (co, ci, k, k)
        t[n + ".bias"] = (co,)

    def norm(n, c):
        t[n + ".weight"] = (c,)
        t[n + ".bias"] = (c,)

    def resblock(p, ci, co):
        norm(p + ".norm1", ci)
        conv(p + ".conv1", co, ci, 3)
        norm(p + ".norm2", co)
        conv(p + ".conv2", co, co, 3)
        if ci != co:
            conv(p + ".nin_shortcut", co, ci, 1)

    conv("encoder.conv_in", CH, 3, 3)
    cin = CH
    for i, m in enumerate(MULT):
        cout = CH * m
        for j in range(NRB):
            resblock(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
        if i != len(MULT) - 1:
            conv(f"encoder.down.{i}.downsample.conv", cout, cout, 3)
    resblock("encoder.mid.block_1", cin, cin)
    norm("encoder.mid.attn_1.norm", cin)
    for n in ("q", "k", "v", "proj_out"):
        conv(f"encoder.mid.attn_1.{n}", cin, cin, 1)
    resblock("encoder.mid.block_2", cin, cin)
    norm("encoder.norm_out", cin)
    conv("encoder.conv_out", 2 * ZC, cin, 3)
    conv("quant_conv", 2 * ZC, 2 * ZC, 1)
    return {"first_stage_model." + k: v for k, v in t.items()}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1:]
    tensors = {}
    with safe_open(src, "np") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    ref = tensors.get("first_stage_model.post_quant_conv.weight")
    if ref is None:
        sys.exit(f"{src}: no first_stage_model.post_quant_conv.weight; not an SD1.x single file")
    rng = np.random.default_rng(0)
    added = 0
    for k, shape in encoder_shapes().items():
        if k not in tensors:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            tensors[k] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(ref.dtype)
            added += 1
    save_file(tensors, dst, metadata=meta)
    print(f"sdcpp_ckpt: {dst}: {len(tensors)} tensors, {added} VAE encoder tensors added")


if __name__ == "__main__":
    main()
