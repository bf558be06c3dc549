"""The device path: uint8 tensors cached beside a folder dataset, batches drawn by index, and the
same normalised pixels as the per-image path; stage two on cached features."""

import dataclasses
import os

import pytest
import torch

import numpy as np

import config
import loaddataset
import net
from simclr import augment, datasets, errors, loaders_device, protocols, runtime
from conftest import CLASSES, TRAIN_PER_CLASS, draw, stage_one_data

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def cache_files(image_folder):
    folder = image_folder / loaders_device.CACHE_FOLDER
    return sorted(os.listdir(folder)) if folder.exists() else []


def folder_split(image_folder, train):
    """A folder split as the device path decodes it: read from a fresh listing of the folder."""
    source = datasets.DataSource("folder", str(image_folder))
    return loaders_device.uint8_split(source, train, 32, 0)


def test_folder_split_is_decoded_once_then_read_from_the_cache(image_folder):
    images, labels = folder_split(image_folder, True)
    classes = datasets.DataSource("folder", str(image_folder)).class_names
    assert (
        images.shape == (len(CLASSES) * TRAIN_PER_CLASS, 3, 32, 32) and images.dtype == torch.uint8
    )
    assert classes == list(CLASSES) and labels.bincount().tolist() == [TRAIN_PER_CLASS] * 3
    first = datasets.rgb_loader(image_folder / "train" / CLASSES[0] / "0.png")
    assert torch.equal(images[0], torch.from_numpy(np.array(first)).permute(2, 0, 1))
    assert len(cache_files(image_folder)) == 1
    again, again_labels = folder_split(image_folder, True)
    assert torch.equal(again, images) and torch.equal(again_labels, labels)
    assert len(cache_files(image_folder)) == 1  # read, not written again
    draw(0, np.random.default_rng(9)).save(image_folder / "train" / CLASSES[0] / "new.png")
    grown, _ = folder_split(image_folder, True)
    assert len(grown) == len(images) + 1 and len(cache_files(image_folder)) == 2


def test_plain_batches_equal_the_per_image_eval_transform(image_folder):
    images, labels = folder_split(image_folder, False)
    batches = loaders_device.PlainBatches(images, labels, 4, MEAN, STD, torch.device("cpu"))
    served = torch.cat([batch for batch, _ in batches])
    per_image = datasets.Transformed(
        datasets.DataSource("folder", str(image_folder)).split(train=False),
        augment.eval_transform(32, MEAN, STD),
    )
    expected = torch.stack([per_image[index][0] for index in range(len(per_image))])
    assert len(batches) == 3 and served.shape == expected.shape
    torch.testing.assert_close(served, expected, atol=1e-6, rtol=0)


def test_view_pairs_come_in_full_batches_with_a_new_order_each_epoch(image_folder):
    images, labels = folder_split(image_folder, True)
    batch_augment = loaders_device.augment_batched.BatchSimCLRAugmentation(
        32, MEAN, STD, augment.SIMCLR
    )
    batches = loaders_device.ViewPairBatches(
        images, labels, 10, batch_augment, 0, torch.device("cpu")
    )
    epochs = [list(batches) for _ in range(2)]
    assert len(batches) == len(epochs[0]) == 2  # 24 images, batch 10, the last 4 dropped
    (x1, x2), batch_labels = epochs[0][0]
    assert x1.shape == x2.shape == (10, 3, 32, 32) and not torch.equal(x1, x2)
    orders = [torch.cat([batch_labels for _, batch_labels in epoch]) for epoch in epochs]
    assert not torch.equal(orders[0], orders[1])


def test_both_views_and_the_label_come_from_the_same_image_normalised_exactly():
    """Constant images whose value is their index, an augmentation that changes nothing: each
    view must show its own image's value, normalised as (value / 255 - mean) / std."""
    count, mean, std = 40, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    images = torch.arange(count, dtype=torch.uint8)[:, None, None, None].expand(count, 3, 32, 32)
    labels = torch.arange(count) % 3
    identity = augment.AugmentationSpec(
        crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0
    )
    batch_augment = loaders_device.augment_batched.BatchSimCLRAugmentation(32, mean, std, identity)
    batches = loaders_device.ViewPairBatches(
        images, labels, 8, batch_augment, 0, torch.device("cpu")
    )
    mean_, std_ = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    seen = []
    for (x1, x2), batch_labels in batches:
        values = (x1 * std_ + mean_)[:, 0, 0, 0] * 255
        index = values.round().long()
        seen += index.tolist()
        torch.testing.assert_close(x2, x1, atol=0, rtol=0)
        assert batch_labels.tolist() == (index % 3).tolist()
        expected = (index.float()[:, None, None, None] / 255 - mean_) / std_
        torch.testing.assert_close(x1, expected.expand_as(x1), atol=1e-5, rtol=0)
    assert sorted(seen) == list(range(count))  # every image once per epoch


def test_stage_one_plan_resolves_the_settings_once_the_data_is_counted():
    """What the loading, the training and config.json read: the dataset's defaults, the kNN
    queries, the data path, the augmentation and the lr schedule, in one frozen record."""
    counted = loaddataset.PretrainSources(
        source=None, monitor=object(), training_images=500, pretraining_images=600,
        memory_images=500, test_images=10_000,
    )  # fmt: skip
    cpu = torch.device("cpu")
    cfg = config.Pretrain(dataset="stl10", batch_size=256, epochs=5, blur=True)
    plan = config.stage_one_plan(cfg, counted, cpu)
    assert (plan.settings.image_size, plan.settings.stem, plan.settings.proj_layers) == (
        96,
        "imagenet",
        2,
    )
    assert plan.knn_queries == config.KNN_MIN_QUERIES and plan.data_path == "device"
    assert plan.peak_lr == 1.0 and plan.warmup_epochs == 0.5  # a tenth of a 5-epoch run
    assert plan.augmentation.blur and plan.augmentation == augment.spec_of(
        (*augment.DEFAULT_OPS, "blur"), cfg.color_strength, False
    )
    assert plan.lr_schedule(10)(4) == pytest.approx(1.0)  # the peak, after 5 warm-up steps
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.peak_lr = 2.0
    unmonitored = config.stage_one_plan(cfg, counted._replace(monitor=None), cpu)
    assert unmonitored.knn_queries == 0


def test_auto_keeps_the_training_split_on_a_gpu_only_up_to_an_eighth_of_its_memory(monkeypatch):
    """A GPU of 16 GiB takes up to 2 GiB of uint8 images (CIFAR-10 is 150 MiB); a CPU up to 8."""
    monkeypatch.setattr(runtime, "device_memory", lambda device: 16 * 2**30)
    gpu, cfg = torch.device("cuda"), config.Pretrain(image_size=32)
    per_image = 3 * 32**2
    assert config.data_path(cfg, 2 * 2**30 // per_image, gpu) == "device"
    assert config.data_path(cfg, 2 * 2**30 // per_image + 1, gpu) == "workers"
    monkeypatch.setattr(runtime, "device_memory", lambda device: None)
    assert config.data_path(cfg, 2 * 2**30 // per_image + 1, torch.device("cpu")) == "device"


def test_auto_chooses_the_device_path_for_small_data_and_the_flag_forces_either(image_folder):
    cpu = torch.device("cpu")
    assert config.data_path(config.Pretrain(image_size=32), 24, cpu) == "device"
    cfg = config.Pretrain(image_size=32, data_path="workers")
    assert config.data_path(cfg, 24, cpu) == "workers"
    assert config.data_path(config.Pretrain(image_size=10**5), 24, cpu) == "workers"
    assert (
        config.data_path(config.Pretrain(image_size=10**5, data_path="device"), 24, cpu) == "device"
    )
    cfg = config.Pretrain(dataset="folder", data_dir=str(image_folder), batch_size=8, workers=0)
    data = stage_one_data(cfg, cpu)
    assert data.path == "device" and isinstance(data.views_loader, loaders_device.ViewPairBatches)


def test_device_path_subset_and_batch_size_check(image_folder):
    cfg = config.Pretrain(
        dataset="folder", data_dir=str(image_folder), subset=12, batch_size=6, workers=0
    )
    data = stage_one_data(cfg, torch.device("cpu"))
    assert data.path == "device"
    assert data.views_loader.labels.bincount().tolist() == [4, 4, 4]
    assert len(data.memory_loader.images) == 12 and len(data.test_loader.images) == 9
    with pytest.raises(errors.InputError, match="larger than the 24 training images"):
        stage_one_data(
            config.Pretrain(dataset="folder", data_dir=str(image_folder), batch_size=25, workers=0)
        )


def test_cached_features_give_the_same_test_results_as_an_encoder_pass_per_step(image_folder):
    torch.manual_seed(0)
    model = net.LinearClassifier(net.resnet_encoder("resnet18"), 512, len(CLASSES))
    cfg = config.Evaluate(
        dataset="folder",
        data_dir=str(image_folder),
        batch_size=8,
        workers=0,
        precision="fp32",
        channels_last=False,
    )
    source = datasets.DataSource(cfg.dataset, cfg.data_dir)
    data = loaddataset.labelled_data(cfg, source, 32, MEAN, STD)
    cpu = runtime.Encoding(torch.device("cpu"))
    per_step = protocols.PerStepProtocol(model, data, cpu, cfg)
    cached = protocols.CachedFeaturesProtocol(model, data, cpu, cfg)
    assert cached.steps_per_epoch == 3 and len(cached.train_passes[0][1]) == 24
    expected, found = per_step.evaluate(), cached.evaluate()
    assert found.loss == pytest.approx(expected.loss, rel=1e-4)
    assert (found.top1, found.top5) == (expected.top1, expected.top5)
    assert torch.equal(found.predictions, expected.predictions)
    assert torch.equal(found.labels, expected.labels)
    augmented = protocols.CachedFeaturesProtocol(
        model,
        data,
        cpu,
        dataclasses.replace(cfg, augmented_passes=2),
    )
    assert len(augmented.train_passes) == 2
    assert not torch.equal(augmented.train_passes[0][0].sum(0), augmented.train_passes[1][0].sum(0))
    for epoch, expected_pass in ((1, 0), (2, 1), (3, 0)):  # one pass per epoch, in turn
        served = torch.cat([features for features, _ in augmented.batches(epoch)])
        torch.testing.assert_close(served.sum(0), augmented.train_passes[expected_pass][0].sum(0))
