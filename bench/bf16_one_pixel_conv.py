"""The weight gradient of ResNet-18's last-stage entry convolution (256 -> 512 channels, 3x3,
stride 2) under bf16 autocast on the CPU, against the same gradient in fp32, on inputs of 1x1 and
2x2 pixels: a CIFAR ResNet meets a 1x1 input there with 4 px images. Torch's oneDNN kernels on a
CPU with native bf16 have returned garbage (inf, 1e26) for the 1x1 input in some of the trials,
which is why tests/test_activation_checkpointing.py uses 8 px images. Prints, per input size, how
many trials were off by more than bf16's rounding.

    python bench/bf16_one_pixel_conv.py --trials 12
"""

import argparse
import statistics

import torch

WRONG = 0.05  # relative to the fp32 gradient's largest entry; bf16's rounding stays near 0.01


def weight_gradient(conv, inputs, autocast):
    conv.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        outputs = conv(inputs)
    outputs.float().pow(2).mean().backward()
    return conv.weight.grad.clone()


def relative_errors(pixels, trials):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 512, 3, stride=2, padding=1, bias=False)
    inputs = torch.randn(4, 256, pixels, pixels)
    expected = weight_gradient(conv, inputs, autocast=False)
    scale = expected.abs().max()
    return [
        ((weight_gradient(conv, inputs, autocast=True) - expected).abs().max() / scale).item()
        for _ in range(trials)
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for pixels in (1, 2):
        errors = relative_errors(pixels, args.trials)
        wrong = sum(not error <= WRONG for error in errors)  # a NaN counts as wrong
        print(
            f"{pixels}x{pixels} input: {wrong} of {args.trials} trials wrong (error above "
            f"{WRONG} of the largest entry); median error {statistics.median(errors):.3g}, largest "
            f"{max(errors):.3g}"
        )
