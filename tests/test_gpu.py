"""What only a GPU reaches: device-side generators on CUDA, bf16 autocast, channels_last,
--compile, and NCCL across two GPUs. Marked `gpu`: skipped without CUDA (tests/conftest.py),
run with `python -m pytest -q -m gpu tests` where a GPU is present."""

import pytest
import torch
import torch.nn.functional as F

from simclr import augment_batched
from simclr import loaders_device
from simclr import runtime
import net
from conftest import assert_same_training, run_script, stage1_args, torchrun, training_log

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def uint8_images(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)


def test_cuda_generators_draw_the_same_views_again_and_for_any_slice_of_the_batch():
    augmentation = augment_batched.BatchSimCLRAugmentation(32, MEAN, STD)
    images = uint8_images(16).to(CUDA)
    first = augmentation(images, torch.Generator(device=CUDA).manual_seed(3))
    again = augmentation(images, torch.Generator(device=CUDA).manual_seed(3))
    assert first.device.type == "cuda" and torch.equal(first, again)
    parameters = augmentation.draw(16, (32, 32), torch.Generator(device=CUDA).manual_seed(3), CUDA)
    rows = slice(8, 16)
    torch.testing.assert_close(augmentation.apply(images[rows], parameters.rows(rows)), first[rows])


def test_batches_on_the_gpu_follow_their_seed():
    images, labels = uint8_images(32), torch.arange(32) % 4
    augmentation = augment_batched.BatchSimCLRAugmentation(32, MEAN, STD)
    passes = [
        list(loaders_device.ViewPairBatches(images, labels, 8, augmentation, seed, CUDA))
        for seed in (0, 0, 1)
    ]
    same = all(torch.equal(a[0][0], b[0][0]) for a, b in zip(passes[0], passes[1]))
    assert same and not torch.equal(passes[0][0][0][0], passes[2][0][0][0])


def test_bf16_autocast_and_channels_last_give_the_float32_loss_closely():
    torch.manual_seed(0)
    model = net.SimCLRNet("resnet18").to(CUDA)
    x = torch.randn(32, 3, 32, 32, device=CUDA)
    losses = []
    for dtype, channels_last in ((None, False), (torch.bfloat16, True)):
        encoding = runtime.Encoding(CUDA, dtype, channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        with encoding.autocast():
            _, z = model(encoding.inputs(x))
        losses.append(F.cross_entropy(*net.contrastive_logits(*z.float().chunk(2), 0.5)).item())
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)


def test_a_compiled_bf16_run_on_the_gpu_saves_weights_that_load_into_a_plain_model(
    image_folder, tmp_path
):
    run_dir = tmp_path / "run"
    args = stage1_args(image_folder, run_dir, "--device", "cuda", "--precision", "bf16")
    args += ["--compile"]
    result = run_script("trainstage1.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "stage1_last.pth", weights_only=True)
    assert net.SimCLRNet("resnet18").load_state_dict(checkpoint["model"]).missing_keys == []
    assert float(training_log(run_dir)[-1]["loss"]) > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL across GPUs needs two of them")
def test_two_gpus_with_nccl_train_the_one_gpu_run(image_folder, tmp_path):
    logs = []
    for processes in (1, 2):
        run_dir = tmp_path / f"run{processes}"
        args = stage1_args(image_folder, run_dir, "--device", "cuda")
        result = torchrun("trainstage1.py", args, processes=processes)
        assert result.returncode == 0, result.stderr[-3000:]
        logs.append(training_log(run_dir))
    assert_same_training(logs[1], logs[0])
