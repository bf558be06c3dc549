"""Data parallelism on this CPU: two processes joined by the Gloo backend, as torchrun runs them."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import config
import devicedata
import distributed
import errors
import evaluate
import net
import optimizers
from conftest import assert_documented, load_script

WORLD = 2


def loss_on_rank(rank, init_file, z1, z2, out_dir):
    """One rank: the loss of its slice of the global batch against every rank's views, and the
    gradient with respect to its own projections, saved as RANK.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    n = len(z1) // WORLD
    mine1 = z1[rank * n : (rank + 1) * n].clone().requires_grad_()
    mine2 = z2[rank * n : (rank + 1) * n].clone().requires_grad_()
    loss = F.cross_entropy(*net.contrastive_logits(mine1, mine2, 0.5, across_ranks=True))
    loss.backward()
    torch.save({"loss": loss.detach(), "z1": mine1.grad, "z2": mine2.grad}, out_dir / f"{rank}.pt")
    dist.destroy_process_group()


def test_the_loss_across_two_ranks_is_the_one_process_loss_with_its_gradient(tmp_path):
    """Each rank holds different images (a symmetric case would hide a gradient that is not summed
    over the ranks). The ranks' mean loss is the one-process loss of the whole batch, and each
    rank's gradient, averaged over the ranks as DistributedDataParallel averages it, is the
    one-process gradient of its rows."""
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 8, 6, generator=generator)
    z2 = z1 + 0.3 * z2  # positives similar to their anchors, as after some training
    mp.spawn(loss_on_rank, args=(tmp_path / "init", z1, z2, tmp_path), nprocs=WORLD)
    whole1, whole2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = net.nt_xent(whole1, whole2, 0.5)
    loss.backward()
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(WORLD)]
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, loss.detach())
    for rank, saved in enumerate(ranks):
        rows = slice(rank * 4, (rank + 1) * 4)
        torch.testing.assert_close(saved["z1"] / WORLD, whole1.grad[rows], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(saved["z2"] / WORLD, whole2.grad[rows], atol=1e-6, rtol=1e-5)


def small_network():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(144, 5),
        nn.BatchNorm1d(5),
    )


def step_on_rank(rank, init_file, images, labels, out_dir):
    """One SGD step of DistributedDataParallel on this rank's half of the batch, with BatchNorm
    across ranks; the weights and running statistics after it saved as RANK.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    model = distributed.cross_rank_batchnorm(small_network())
    parallel = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.SGD(parallel.parameters(), lr=0.5)
    n = len(images) // WORLD
    rows = slice(rank * n, (rank + 1) * n)
    F.cross_entropy(parallel(images[rows]), labels[rows]).backward()
    optimizer.step()
    with torch.no_grad():
        evaluated = model.eval()(images[rows])
    torch.save({"state": model.state_dict(), "eval": evaluated}, out_dir / f"{rank}.pt")
    dist.destroy_process_group()


def test_a_step_with_batchnorm_across_two_ranks_is_the_one_process_step_on_the_whole_batch(
    tmp_path,
):
    """Different images on each rank: BatchNorm statistics per rank would normalise each half
    differently and the weights would differ from the one-process step."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 8, 8, generator=generator)
    images[4:] = 3 * images[4:] + 1  # the second rank's half unlike the first
    labels = torch.randint(0, 5, (8,), generator=generator)
    mp.spawn(step_on_rank, args=(tmp_path / "init", images, labels, tmp_path), nprocs=WORLD)
    model = small_network()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    expected = model.state_dict()
    for rank in range(WORLD):
        saved = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        found = saved["state"]
        assert found.keys() == expected.keys()  # a plain BatchNorm state_dict
        for name, tensor in expected.items():
            torch.testing.assert_close(found[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
        # in eval mode it is plain BatchNorm: the running statistics, not the batch's
        plain = small_network()
        plain.load_state_dict(found)
        with torch.no_grad():
            evaluated = plain.eval()(images[rank * 4 : (rank + 1) * 4])
        torch.testing.assert_close(saved["eval"], evaluated, atol=1e-6, rtol=1e-5)


def test_a_named_gpu_under_torchrun_is_refused_alike_on_every_rank(monkeypatch):
    """Refused on rank 1 alone, the error would be printed by no one (rank 0 prints what every
    rank meets) while rank 0 waited for rank 1."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for local_rank in ("0", "1"):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(errors.InputError) as raised:
            distributed.rank_device(torch.device("cuda:0"))
        assert raised.value.on_every_rank
        assert_documented(raised.value.line())


def knn_images():
    """30 memory and 11 query images of 3 classes, each a faint class colour under strong noise: a
    kNN on their pixels gets 7 of the 11 right, and one that searched only its rank's half of the
    memory bank 3 (on data where kNN saturates, as stage one's tiny test runs, both give 100%)."""
    generator = torch.Generator().manual_seed(4)

    def images(count):
        labels = torch.arange(count) % 3
        colours = torch.eye(3)[labels][:, :, None, None] * 25 + 110
        noise = torch.randn(count, 3, 4, 4, generator=generator) * 70
        return (colours + noise).clamp(0, 255).to(torch.uint8), labels

    return images(30), images(11)


def knn_top1_of_this_process(knn_parts):
    """kNN top-1 of raw pixels, with the loaders that stage one's monitor uses (each rank's shard
    of the memory and of the queries under torchrun, padded)."""
    (memory, memory_labels), (queries, query_labels) = knn_parts
    cpu, mean, std = torch.device("cpu"), (0.5,) * 3, (0.25,) * 3
    memory_loader = devicedata.PlainBatches(memory, memory_labels, 4, mean, std, cpu)
    query_loader = devicedata.PlainBatches(queries, query_labels, 4, mean, std, cpu)
    encoding = evaluate.Encoding(cpu)
    return evaluate.knn_top1(nn.Flatten(), memory_loader, query_loader, encoding, 5, 0.1)


def training_config():
    return config.Pretrain(
        arch="resnet18", image_size=16, stem="cifar", batch_size=8, epochs=1, optimizer="sgd",
        momentum=0.0, weight_decay=0.0, precision="fp32", channels_last=False,
    )  # fmt: skip


def one_step(x1, x2):
    """The weights after one train_step of stage one (plain SGD at lr 1: the change is minus the
    gradient), this process's share of the views given. The network in float64 (the loss stays in
    float32, as in training): in float32 the first layers' gradient passes 20 BatchNorm backward
    passes, whose cancellations leave it only 3 digits for comparing two orders of summation."""
    torch.manual_seed(0)
    trainstage1 = load_script("trainstage1")
    torch.set_default_dtype(torch.float64)
    try:
        training = trainstage1.start_training(training_config(), torch.device("cpu"), 1)
        optimizers.set_lr(training.optimizer, 1.0)
        trainstage1.train_step(training, x1.double(), x2.double())
    finally:
        torch.set_default_dtype(torch.float32)
    return {name: tensor.detach().clone() for name, tensor in training.model.state_dict().items()}


def step_and_knn_on_rank(rank, init_file, views, knn_parts, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    n = len(views[0]) // WORLD
    x1, x2 = (view[rank * n : (rank + 1) * n] for view in views)
    found = {"weights": one_step(x1, x2), "knn_top1": knn_top1_of_this_process(knn_parts)}
    torch.save(found, out_dir / f"{rank}.pt")
    dist.destroy_process_group()


def test_stage_one_steps_and_the_knn_monitor_on_two_ranks_equal_one_process(tmp_path):
    """stage one's own train_step (DistributedDataParallel, the gathered loss, BatchNorm across
    ranks) on two ranks holding different images moves every weight as one process does on the
    whole batch, to 1e-3 of the change: a gradient doubled or halved anywhere is off by 100% or
    50%, a loss or BatchNorm statistics per rank by far more than float32's rounding. And the kNN
    monitor, each rank encoding its shard of the memory bank and of the queries, gives the one-
    process top-1 on data where it does not saturate."""
    generator = torch.Generator().manual_seed(2)
    views = torch.randn(2, 8, 3, 16, 16, generator=generator)
    views[:, 4:] = views[:, 4:] * 2 + 0.5  # the second rank's images unlike the first's
    knn_parts = knn_images()
    mp.spawn(
        step_and_knn_on_rank, args=(tmp_path / "init", views, knn_parts, tmp_path), nprocs=WORLD
    )
    initial = initial_weights()
    expected = one_step(*views)
    expected_knn = knn_top1_of_this_process(knn_parts)
    assert 0 < expected_knn < 100
    for rank in range(WORLD):
        found = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert found["knn_top1"] == expected_knn, rank
        for name, tensor in expected.items():
            if not tensor.is_floating_point():
                continue
            change, found_change = tensor - initial[name], found["weights"][name] - initial[name]
            assert change.norm() > 0, name
            error = ((found_change - change).norm() / change.norm()).item()
            assert error <= 1e-3, (name, error)


def initial_weights():
    """The network that one_step starts from, before its step."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    try:
        return net.SimCLRNet("resnet18", 128, "cifar").state_dict()
    finally:
        torch.set_default_dtype(torch.float32)
