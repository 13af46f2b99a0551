#!/usr/bin/env python3
"""The problems kernels/bench/bench_ops.c times, timed in PyTorch on the same
GPU, for ratios (tools/gpu_check/report.py): SDPA (flash where it applies),
channels-last fp16 convolution with bias, GroupNorm + SiLU, LayerNorm,
softmax, GEGLU, the elementwise ops, linear. The op/shape keys are
bench_ops's. Each is the median of 7 rounds of 10 calls between CUDA events
after 3 warm-up calls (bench_ops: the same rounds, host-timed around syncs).
Prints a table; --json FILE writes [{op, shape, ms}].
    usage: torch_ops.py [--quick] [--json FILE]"""
import argparse
import json
import statistics
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []

    def done():
        if a.json:
            with open(a.json, "w") as f:
                json.dump(rows, f, indent=1)

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"skipped: no PyTorch ({e})")
        return done()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device (torch.cuda.is_available() is False)")
        return done()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # as bench_ops' fp32 GEMMs (TF32)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
          f"cudnn {torch.backends.cudnn.version()}")

    def rnd(*shape, dtype=torch.float16):
        return (torch.rand(*shape, device=dev, dtype=torch.float32) * 2 - 1).to(dtype)

    def time_ms(fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t = []
        for _ in range(7):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(10):
                fn()
            e.record()
            e.synchronize()
            t.append(s.elapsed_time(e) / 10)
        return statistics.median(t)

    def row(op, shape, fn):
        try:
            ms = time_ms(fn)
        except Exception as ex:  # a shape a backend refuses: say so, go on
            print(f"| {op} | {shape} | error: {ex} |")
            rows.append({"op": op, "shape": shape, "ms": -1, "error": str(ex)})
            return
        print(f"| {op} | {shape} | {ms:.3f} |")
        rows.append({"op": op, "shape": shape, "ms": ms})
        sys.stdout.flush()

    print("| op | shape | ms |\n|---|---|---|")

    def attention(b, lq, lk, h, d, dtype=torch.float16):
        # ours: [B, L, H*D]; SDPA wants [B, H, L, D] (a strided view, no copy)
        q = rnd(b, lq, h * d, dtype=dtype).view(b, lq, h, d).transpose(1, 2)
        k = rnd(b, lk, h * d, dtype=dtype).view(b, lk, h, d).transpose(1, 2)
        v = rnd(b, lk, h * d, dtype=dtype).view(b, lk, h, d).transpose(1, 2)
        name = "attention (GEMM-softmax-GEMM)" if d > 256 else "attention (flash, mma.sync)"
        f32 = " f32" if dtype == torch.float32 else ""
        row(name, f"B{b} Lq{lq} Lk{lk} H{h} D{d}{f32}",
            lambda: F.scaled_dot_product_attention(q, k, v))

    def conv(n, hw, ci, co, k, stride, dtype=torch.float16):
        x = rnd(n, ci, hw, hw, dtype=dtype).to(memory_format=torch.channels_last)
        w = (rnd(co, ci, k, k, dtype=dtype) * 0.05).to(memory_format=torch.channels_last)
        bias = rnd(co, dtype=dtype)
        f32 = " f32" if dtype == torch.float32 else ""
        row("conv2d (im2col + cuBLASLt)", f"x[{n},{hw},{hw},{ci}] {k}x{k} s{stride} -> {co}{f32}",
            lambda: F.conv2d(x, w, bias, stride=stride, padding=k // 2))

    def linear(m, k, n):
        x, w, b = rnd(m, k), rnd(n, k), rnd(n)
        row("linear (cuBLASLt, bias epilogue)", f"[{m},{k}] x [{n},{k}]^T + b",
            lambda: F.linear(x, w, b))

    attention(2, 4096, 4096, 8, 40)
    attention(2, 4096, 77, 8, 40)
    attention(2, 1024, 1024, 8, 80)
    attention(2, 256, 256, 8, 160)
    attention(2, 4096, 4096, 5, 64)
    conv(2, 64, 320, 320, 3, 1)
    conv(2, 64, 320, 320, 3, 2)
    conv(2, 32, 640, 640, 3, 1)
    if not a.quick:
        conv(1, 512, 128, 128, 3, 1)
    linear(8192, 320, 1280)
    linear(8192, 1280, 320)
    linear(8192, 320, 960)

    x = rnd(2, 320, 64, 64).to(memory_format=torch.channels_last)
    g, bb = rnd(320), rnd(320)
    row("group_norm + SiLU", "[2,64,64,320] 32 groups",
        lambda: F.silu(F.group_norm(x, 32, g, bb, 1e-5)))
    t = rnd(2, 4096, 320)
    row("layer_norm", "[2,4096,320]", lambda: F.layer_norm(t, (320,), g, bb))
    s = rnd(16 * 1024, 1024)
    row("softmax", "[16384,1024]", lambda: torch.softmax(s, -1))
    gg = rnd(8192, 2560)

    def geglu():
        h, gate = gg.chunk(2, -1)
        return h * F.gelu(gate)

    row("geglu", "[8192,2560] -> [8192,1280]", geglu)
    y = rnd(2, 320, 64, 64).to(memory_format=torch.channels_last)
    row("binary add (residual)", "[2,64,64,320]", lambda: x + y)
    row("unary SiLU", "[2,64,64,320]", lambda: F.silu(x))
    row("upsample2x", "[2,64,64,320] -> [2,128,128,320]",
        lambda: F.interpolate(x, scale_factor=2.0, mode="nearest"))
    c1, c2 = rnd(2, 4096, 640), rnd(2, 4096, 640)
    row("concat (skip)", "[2,4096,640] + [2,4096,640]", lambda: torch.cat([c1, c2], -1))
    attention(1, 4096, 4096, 1, 512)
    attention(1, 4096, 4096, 1, 512, dtype=torch.float32)
    if not a.quick:
        conv(1, 256, 256, 256, 3, 1, dtype=torch.float32)
    done()


if __name__ == "__main__":
    main()
