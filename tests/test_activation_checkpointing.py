"""--activation-checkpointing: the encoder's stages recomputed in the backward pass change memory
and time, never the run. tests/test_distributed.py checks it on two ranks."""

import pytest
import torch

import net
from simclr import rundir, runtime
from conftest import (
    assert_documented,
    error_lines,
    load_script,
    run_main,
    signal_after_calls,
    stage1_args,
    training_log,
)


def two_steps(recompute, autocast=None, channels_last=False):
    """(losses, gradients after the last step, state_dict after it) of two SGD steps; one under
    autocast to a half precision (autocast: its dtype), which CPUs without it emulate slowly."""
    torch.manual_seed(0)
    # 4 images: CPUs without bf16 run a half precision's convolutions through torch's slow
    # reference kernels, whose cost follows the batch. 8 px, not fewer: at 4 px the last stage's
    # first convolution sees one pixel, whose bf16 weight gradient torch's kernels on CPUs with
    # bf16 get wrong now and then (bench/bf16_one_pixel_conv.py), where recomputing is exact
    model = net.SimCLRNet("resnet18", 16)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.recompute_activations = recompute
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator, losses = torch.Generator().manual_seed(1), []
    for _ in range(1 if autocast else 2):
        images = torch.randn(4, 3, 8, 8, generator=generator)
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=bool(autocast)):
            _, z = model(images)
        loss = z.float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    gradients = {name: weight.grad.clone() for name, weight in model.named_parameters()}
    return losses, gradients, {name: value.clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize(
    "autocast, channels_last",
    [(None, False), (torch.bfloat16, False), (torch.float16, False), (None, True)],
)
def test_recomputed_stages_give_the_same_loss_gradients_and_running_statistics(
    autocast, channels_last
):
    """The recomputation runs the same kernels on the same inputs, so the numbers agree to the
    bit on this CPU; the tolerance (1e-6 in fp32, 1e-2 under autocast: bf16 keeps 8 bits of
    mantissa) leaves room for a GPU's kernel choice; a batch counted twice is off by a whole
    count, and a running mean updated twice by momentum 0.1 of a batch's mean."""
    without, recomputed = (
        two_steps(False, autocast, channels_last),
        two_steps(True, autocast, channels_last),
    )
    tolerance = {"atol": 1e-2, "rtol": 1e-2} if autocast else {"atol": 1e-6, "rtol": 1e-6}
    assert recomputed[0] == pytest.approx(without[0], rel=tolerance["rtol"])
    for found, expected in zip(recomputed[1:], without[1:]):
        assert found.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(found[name], expected[name], **tolerance, msg=name)
    batches = [name for name in without[2] if name.endswith("num_batches_tracked")]
    steps = len(without[0])
    assert batches and all(recomputed[2][name] == steps for name in batches)  # each step once


def test_only_training_recomputes(monkeypatch):
    """No recomputation without a backward pass: evaluation and the kNN monitor run as before."""
    calls = []
    monkeypatch.setattr(net, "recomputed", lambda stage, x: calls.append(1) or stage(x))
    model = net.SimCLRNet("resnet18", 16)
    model.recompute_activations = True
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        model(images)
    model.eval()(images)
    assert calls == []
    model.train()(images)
    assert len(calls) == 4  # the four stages


@pytest.mark.long
def test_a_run_with_the_flag_is_the_run_without_it_and_the_flag_may_change_on_resume(
    image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    plain, recomputed, switched = tmp_path / "plain", tmp_path / "recomputed", tmp_path / "switched"
    stages_recomputed, recompute = [], net.recomputed
    monkeypatch.setattr(
        net, "recomputed", lambda stage, x: stages_recomputed.append(1) or recompute(stage, x)
    )
    assert run_main("trainstage1", stage1_args(image_folder, plain), capsys)[0] == 0
    assert stages_recomputed == []
    flag = "--activation-checkpointing"
    code, out, _ = run_main("trainstage1", [*stage1_args(image_folder, recomputed), flag], capsys)
    start = next(line for line in out.splitlines() if line.startswith("run folder"))
    assert code == 0 and "in fp32, channels_last, activation checkpointing" in start
    assert len(stages_recomputed) == 4 * 3 * 2  # the flag reached the model: 4 stages, 6 steps
    assert rundir.read_json(recomputed / "config.json")["config"]["activation_checkpointing"]
    assert training_log(recomputed) == training_log(plain)
    # stopped after step 2 without the flag, resumed with it: still the same run
    with monkeypatch.context() as patch:
        trainstage1 = load_script("trainstage1")
        signal_after_calls(trainstage1, "train_step", 2, patch)
        with pytest.raises(SystemExit):
            trainstage1.main([str(arg) for arg in stage1_args(image_folder, switched)])
    resumed = ["--resume", "--run-dir", str(switched), flag]
    code, out, _ = run_main("trainstage1", resumed, capsys)
    assert code == 0 and "activation checkpointing" in out and "resuming in epoch 1" in out
    assert training_log(switched) == training_log(plain)
    for run in (recomputed, switched):
        found = torch.load(run / "stage1_last.pth", weights_only=True)["model"]
        expected = torch.load(plain / "stage1_last.pth", weights_only=True)["model"]
        for name, tensor in expected.items():
            torch.testing.assert_close(found[name], tensor, atol=1e-6, rtol=1e-6, msg=name)


def test_out_of_memory_names_the_flag_when_the_batch_fits_with_it(
    image_folder, tmp_path, monkeypatch, capsys
):
    """A fake memory limit: 16 images fit only with the activations recomputed."""
    monkeypatch.chdir(tmp_path)
    trainstage1 = load_script("trainstage1")
    real_step = trainstage1.train_step

    def step_that_fits_16_recomputed(training, x1, x2):
        if len(x1) > 4 and not training.model.recompute_activations:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(training, x1, x2)

    monkeypatch.setattr(trainstage1, "train_step", step_that_fits_16_recomputed)
    argv = [*stage1_args(image_folder, tmp_path / "run"), "--batch-size", "16"]
    with pytest.raises(SystemExit) as exit_info:
        trainstage1.main([str(arg) for arg in argv])
    errors = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and errors == [
        "error: out of cpu memory at --batch-size 16 with resnet18; it fits with "
        "--activation-checkpointing (the same run, about a third more compute): rerun with it"
    ]
    assert_documented(errors[0])
    assert not (tmp_path / "run" / "stage1_last.pth").exists()


@pytest.mark.long
def test_compiled_with_the_flag_each_stage_is_compiled_and_the_run_is_the_same(
    image_folder, tmp_path, monkeypatch, capsys
):
    """torch.compile cannot trace the recomputation, so --compile with the flag compiles each
    stage inside it (dynamo's eager backend here, as in test_pipeline.py): the same log and
    weights as the plain run, under the weights' own names."""
    monkeypatch.chdir(tmp_path)
    compiled, compile_ = [], torch.compile

    def eager_compile(target, **options):
        compiled.append(target)
        return compile_(target, **{**options, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    plain, both = tmp_path / "plain", tmp_path / "both"
    one_epoch = ["--epochs", "1", "--knn-every", "0"]
    assert run_main("trainstage1", [*stage1_args(image_folder, plain), *one_epoch], capsys)[0] == 0
    flags = ["--compile", "--activation-checkpointing", *one_epoch]
    code, _, errors = run_main("trainstage1", [*stage1_args(image_folder, both), *flags], capsys)
    if torch.__version__ < runtime.COMPILE_WITH_RECOMPUTATION_SINCE:  # the requirements' floor
        assert code == 2 and len(errors) == 1 and "needs torch 2.5 or newer" in errors[0]
        assert_documented(errors[0])
        return
    assert code == 0 and errors == []
    assert sum(getattr(target, "__self__", None) is not None for target in compiled) == 4
    assert training_log(both) == training_log(plain)
    found = torch.load(both / "stage1_last.pth", weights_only=True)["model"]
    expected = torch.load(plain / "stage1_last.pth", weights_only=True)["model"]
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(found[name], tensor, atol=1e-6, rtol=1e-6, msg=name)
