"""Data parallelism on this CPU: two processes joined by the Gloo backend, as torchrun runs them."""

import dataclasses

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import config
from simclr import loaders_device
from simclr import distributed
from simclr import errors
from simclr import evaluate
from simclr import runtime
import net
from simclr import optimizers
from conftest import assert_documented, forkserver_context, load_script

# the ranks are spawned once, for the module: its tests in one pytest-xdist worker
pytestmark = [pytest.mark.xdist_group("distributed"), pytest.mark.long]
WORLD = 2


def projections():
    """z1, z2 of 8 images, the positives similar to their anchors as after some training."""
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 8, 6, generator=generator)
    return z1, z1 + 0.3 * z2


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


def batchnorm_batch():
    """8 images and labels, the second rank's half unlike the first: BatchNorm statistics per
    rank would normalise each half differently."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 8, 8, generator=generator)
    images[4:] = 3 * images[4:] + 1
    return images, torch.randint(0, 5, (8,), generator=generator)


def view_pairs():
    """x1, x2 of 8 images of 16x16, the second rank's half unlike the first."""
    generator = torch.Generator().manual_seed(2)
    views = torch.randn(2, 8, 3, 16, 16, generator=generator)
    views[:, 4:] = views[:, 4:] * 2 + 0.5
    return views[0], views[1]


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
    memory_loader = loaders_device.PlainBatches(memory, memory_labels, 4, mean, std, cpu)
    query_loader = loaders_device.PlainBatches(queries, query_labels, 4, mean, std, cpu)
    encoding = runtime.Encoding(cpu)
    return evaluate.knn_top1(nn.Flatten(), memory_loader, query_loader, encoding, 5, 0.1)


def training_config():
    """Resolved as trainstage1.py resolves it (the head's depth, the stem), as start_training needs."""
    return config.with_dataset_defaults(config.Pretrain(
        arch="resnet18", image_size=16, stem="cifar", batch_size=8, epochs=1, optimizer="sgd",
        momentum=0.0, weight_decay=0.0, precision="fp32", channels_last=False,
    ))  # fmt: skip


def one_step(x1, x2, activation_checkpointing=False):
    """The weights after one train_step of stage one (plain SGD at lr 1: the change is minus the
    gradient), this process's share of the views given, with or without
    --activation-checkpointing. The network in float64 (the loss stays in
    float32, as in training): in float32 the first layers' gradient passes 20 BatchNorm backward
    passes, whose cancellations leave it only 3 digits for comparing two orders of summation."""
    torch.manual_seed(0)
    trainstage1 = load_script("trainstage1")
    torch.set_default_dtype(torch.float64)
    try:
        cpu = runtime.Encoding(torch.device("cpu"))
        cfg = dataclasses.replace(
            training_config(), activation_checkpointing=activation_checkpointing
        )
        training = trainstage1.start_training(cfg, cpu, lambda step: 1.0)
        optimizers.set_lr(training.optimizer, 1.0)
        trainstage1.train_step(training, x1.double(), x2.double())
    finally:
        torch.set_default_dtype(torch.float32)
    return {name: tensor.detach().clone() for name, tensor in training.model.state_dict().items()}


def initial_weights():
    """The network that one_step starts from, before its step."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    try:
        return net.SimCLRNet("resnet18", 128, "cifar").state_dict()
    finally:
        torch.set_default_dtype(torch.float32)


def mine(tensor, rank):
    """This rank's half of a batch."""
    n = len(tensor) // WORLD
    return tensor[rank * n : (rank + 1) * n]


def on_rank(rank, init_file, out_dir):
    """One of two Gloo ranks, each holding its half of every batch: the loss against every rank's
    views and its gradient, a DistributedDataParallel step with BatchNorm across the ranks (then
    the same network in eval mode), stage one's train_step, and the kNN monitor. Saved as
    RANK.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    z1, z2 = (mine(z, rank).clone().requires_grad_() for z in projections())
    loss = F.cross_entropy(*net.contrastive_logits(z1, z2, 0.5, across_ranks=True))
    loss.backward()
    found = {"loss": loss.detach(), "z1_grad": z1.grad, "z2_grad": z2.grad}
    model = distributed.cross_rank_batchnorm(small_network())
    parallel = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.SGD(parallel.parameters(), lr=0.5)
    images, labels = batchnorm_batch()
    F.cross_entropy(parallel(mine(images, rank)), mine(labels, rank)).backward()
    optimizer.step()
    with torch.no_grad():
        found |= {"batchnorm_state": model.state_dict(), "eval": model.eval()(mine(images, rank))}
    views = [mine(view, rank) for view in view_pairs()]
    found["weights"] = one_step(*views)
    found["weights_recomputed"] = one_step(*views, activation_checkpointing=True)
    found["knn_top1"] = knn_top1_of_this_process(knn_images())
    torch.save(found, out_dir / f"{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of two ranks found, started once for this module's tests (forked from the
    server that imported torch once, conftest.forkserver_context)."""
    out_dir = tmp_path_factory.mktemp("ranks")
    ranks = [
        forkserver_context().Process(target=on_rank, args=(rank, out_dir / "init", out_dir))
        for rank in range(WORLD)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join()
    assert [process.exitcode for process in ranks] == [0] * WORLD
    return [torch.load(out_dir / f"{rank}.pt", weights_only=True) for rank in range(WORLD)]


def test_the_loss_across_two_ranks_is_the_one_process_loss_with_its_gradient(ranks):
    """Each rank holds different images (a symmetric case would hide a gradient that is not summed
    over the ranks). The ranks' mean loss is the one-process loss of the whole batch, and each
    rank's gradient, averaged over the ranks as DistributedDataParallel averages it, is the
    one-process gradient of its rows."""
    whole1, whole2 = (z.clone().requires_grad_() for z in projections())
    loss = net.nt_xent(whole1, whole2, 0.5)
    loss.backward()
    torch.testing.assert_close(sum(found["loss"] for found in ranks) / WORLD, loss.detach())
    for rank, found in enumerate(ranks):
        for grad, whole in ((found["z1_grad"], whole1), (found["z2_grad"], whole2)):
            torch.testing.assert_close(grad / WORLD, mine(whole.grad, rank), atol=1e-6, rtol=1e-5)


def test_a_step_with_batchnorm_across_two_ranks_is_the_one_process_step_on_the_whole_batch(ranks):
    """Different images on each rank: BatchNorm statistics per rank would normalise each half
    differently and the weights would differ from the one-process step. In eval mode the layer is
    plain BatchNorm: the running statistics, not the batch's."""
    images, labels = batchnorm_batch()
    model = small_network()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    expected = model.state_dict()
    for rank, found in enumerate(ranks):
        state = found["batchnorm_state"]
        assert state.keys() == expected.keys()  # a plain BatchNorm state_dict
        for name, tensor in expected.items():
            torch.testing.assert_close(state[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
        plain = small_network()
        plain.load_state_dict(state)
        with torch.no_grad():
            evaluated = plain.eval()(mine(images, rank))
        torch.testing.assert_close(found["eval"], evaluated, atol=1e-6, rtol=1e-5)


def test_a_stage_one_step_on_two_ranks_moves_every_weight_as_one_process_does(ranks):
    """stage one's own train_step (DistributedDataParallel, the gathered loss, BatchNorm across
    ranks) on two ranks holding different images moves every weight as one process does on the
    whole batch, to 1e-3 of the change (2e-7 seen): a gradient doubled or halved anywhere is off
    by 100% or 50%, a loss or BatchNorm statistics per rank by far more than rounding."""
    initial, expected = initial_weights(), one_step(*view_pairs())
    for found in ranks:
        for name, tensor in expected.items():
            if not tensor.is_floating_point():
                continue
            change, found_change = tensor - initial[name], found["weights"][name] - initial[name]
            assert change.norm() > 0, name
            error = ((found_change - change).norm() / change.norm()).item()
            assert error <= 1e-3, (name, error)


def test_activation_checkpointing_on_two_ranks_changes_no_weight_nor_running_statistic(ranks):
    """The same step with the encoder's stages recomputed in the backward pass, under
    DistributedDataParallel with gathered negatives and BatchNorm synchronised across the ranks
    (which the recomputation synchronises again): every weight, running statistic and batch
    count as without it, to float64 rounding."""
    for found in ranks:
        for name, tensor in found["weights"].items():
            torch.testing.assert_close(
                found["weights_recomputed"][name], tensor, atol=1e-12, rtol=1e-10, msg=name
            )


def test_the_knn_monitor_on_two_ranks_gives_the_one_process_top1(ranks):
    """Each rank encodes its shard of the memory bank and of the queries, the memory bank is
    gathered whole: on data where kNN does not saturate, the one-process top-1."""
    expected = knn_top1_of_this_process(knn_images())
    assert 0 < expected < 100
    assert [found["knn_top1"] for found in ranks] == [expected] * WORLD


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
