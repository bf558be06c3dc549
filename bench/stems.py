"""Multiply-adds of one image through each encoder with each stem, at 32 and 96 pixels.

Counted by torch.utils.flop_counter on a forward pass (no timing: the same on every machine).
From the repository root:  python bench/stems.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import net  # noqa: E402

print("| encoder | input | " + " | ".join(f"--stem {stem}" for stem in net.STEMS) + " |")
print("| --- | --- |" + " --- |" * len(net.STEMS))
for arch in ("resnet18", "resnet50"):
    for size in (32, 96):
        counts = []
        for stem in net.STEMS:
            with FlopCounterMode(display=False) as flops, torch.no_grad():
                net.resnet_encoder(arch, stem).eval()(torch.zeros(1, 3, size, size))
            counts.append(f"{flops.get_total_flops() / 2e9:.2f} G")  # 2 FLOPs per multiply-add
        print(f"| {arch} | {size}×{size} | " + " | ".join(counts) + " |")
