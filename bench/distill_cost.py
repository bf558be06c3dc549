"""What a distillation step costs beside a fine-tuning step: the student's forward and backward
pass on a batch, with (--teacher) or without the frozen teacher's forward pass on the same batch,
as trainstage2.py --mode distill computes the teacher's predictions on the fly.

Random images at stage one's size, in the precision this CPU runs (bf16 where native). Prints the
seconds per step of the timed steps, after warm-up steps. Time the two settings against each other
as whole processes, in turn (A B A B), with any tool that does, or read the printed figures:

    python bench/distill_cost.py --teacher
    python bench/distill_cost.py
"""

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import net  # noqa: E402
from simclr import distillation, runtime  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", action="store_true", help="add the teacher's forward pass")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    dtype = runtime.autocast_dtype(args.precision, device)
    width = net.FEATURE_DIMS[args.arch]

    def classifier(frozen):
        model = net.LinearClassifier(net.resnet_encoder(args.arch), width, 10, frozen=frozen)
        return model.to(memory_format=torch.channels_last)

    student, teacher = classifier(False).train(), classifier(True).eval()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    images = images.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    seconds = []
    for step in range(args.warmup_steps + args.steps):
        started = time.perf_counter()
        with autocast:
            if args.teacher:
                with torch.no_grad():
                    teacher_logits = teacher(images)
            logits = student(images)
        if args.teacher:
            loss = distillation.distillation_loss(logits, teacher_logits, 1.0)
        else:
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= args.warmup_steps:
            seconds.append(time.perf_counter() - started)
    seconds.sort()
    median = seconds[len(seconds) // 2]
    kind = "student + teacher" if args.teacher else "student alone"
    print(
        f"{kind}: {args.arch}, batch {args.batch_size}, {args.image_size} px, "
        f"{runtime.precision_in_effect(dtype)}: median {median:.3f} s/step "
        f"(min {seconds[0]:.3f}, max {seconds[-1]:.3f}, {args.steps} steps)"
    )


if __name__ == "__main__":
    main()
