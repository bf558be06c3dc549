"""The device path: uint8 tensors cached beside a folder dataset, batches drawn by index, and the
same normalised pixels as the per-image path; stage two on cached features."""

import os

import pytest
import torch

import config
import devicedata
import loaddataset
import net
from conftest import CLASSES, TRAIN_PER_CLASS, draw, load_script

import numpy as np

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def cache_files(image_folder):
    folder = image_folder / devicedata.CACHE_FOLDER
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_folder_split_is_decoded_once_then_read_from_the_cache(image_folder):
    images, labels, classes = devicedata.cached_folder_split(str(image_folder), True, 32, 0)
    assert (
        images.shape == (len(CLASSES) * TRAIN_PER_CLASS, 3, 32, 32) and images.dtype == torch.uint8
    )
    assert classes == list(CLASSES) and labels.bincount().tolist() == [TRAIN_PER_CLASS] * 3
    first = loaddataset.rgb_loader(image_folder / "train" / CLASSES[0] / "0.png")
    assert torch.equal(images[0], torch.from_numpy(np.array(first)).permute(2, 0, 1))
    assert len(cache_files(image_folder)) == 1
    again, again_labels, _ = devicedata.cached_folder_split(str(image_folder), True, 32, 0)
    assert torch.equal(again, images) and torch.equal(again_labels, labels)
    assert len(cache_files(image_folder)) == 1  # read, not written again
    draw(0, np.random.default_rng(9)).save(image_folder / "train" / CLASSES[0] / "new.png")
    grown, _, _ = devicedata.cached_folder_split(str(image_folder), True, 32, 0)
    assert len(grown) == len(images) + 1 and len(cache_files(image_folder)) == 2


def test_plain_batches_equal_the_per_image_eval_transform(image_folder):
    images, labels, _ = devicedata.cached_folder_split(str(image_folder), False, 32, 0)
    batches = devicedata.PlainBatches(images, labels, 4, MEAN, STD, torch.device("cpu"))
    served = torch.cat([batch for batch, _ in batches])
    per_image = loaddataset.image_dataset(
        "folder", str(image_folder), False, loaddataset.eval_transform(32, MEAN, STD)
    )
    expected = torch.stack([per_image[index][0] for index in range(len(per_image))])
    assert len(batches) == 3 and served.shape == expected.shape
    torch.testing.assert_close(served, expected, atol=1e-6, rtol=0)


def test_view_pairs_come_in_full_batches_with_a_new_order_each_epoch(image_folder):
    images, labels, _ = devicedata.cached_folder_split(str(image_folder), True, 32, 0)
    augmentation = devicedata.batchaugment.BatchSimCLRAugmentation(32, MEAN, STD)
    batches = devicedata.ViewPairBatches(images, labels, 10, augmentation, 0, torch.device("cpu"))
    epochs = [list(batches) for _ in range(2)]
    assert len(batches) == len(epochs[0]) == 2  # 24 images, batch 10, the last 4 dropped
    (x1, x2), batch_labels = epochs[0][0]
    assert x1.shape == x2.shape == (10, 3, 32, 32) and not torch.equal(x1, x2)
    orders = [torch.cat([batch_labels for _, batch_labels in epoch]) for epoch in epochs]
    assert not torch.equal(orders[0], orders[1])


def test_auto_chooses_the_device_path_for_small_data_and_the_flag_forces_either(image_folder):
    cpu = torch.device("cpu")
    small = config.Pretrain(dataset="folder", data_dir=str(image_folder))
    assert devicedata.chosen(small, cpu)
    assert not devicedata.chosen(
        config.Pretrain(dataset="folder", data_dir=str(image_folder), data_path="workers"), cpu
    )
    huge = config.Pretrain(dataset="folder", data_dir=str(image_folder), image_size=10**5)
    assert not devicedata.chosen(huge, cpu)


def test_device_path_subset_and_batch_size_check(image_folder, capsys):
    cfg = config.Pretrain(
        dataset="folder", data_dir=str(image_folder), subset=12, batch_size=6, workers=0
    )
    data = devicedata.pretraining_data(cfg, torch.device("cpu"))
    assert data.views_loader.labels.bincount().tolist() == [4, 4, 4]
    assert len(data.memory_loader.images) == 12 and len(data.test_loader.images) == 9
    with pytest.raises(SystemExit) as exit_info:
        devicedata.pretraining_data(
            config.Pretrain(dataset="folder", data_dir=str(image_folder), batch_size=25, workers=0),
            torch.device("cpu"),
        )
    assert (
        exit_info.value.code == 2
        and "larger than the 24 training images" in capsys.readouterr().err
    )


def test_cached_features_give_the_same_test_results_as_an_encoder_pass_per_step(image_folder):
    trainstage2 = load_script("trainstage2")
    torch.manual_seed(0)
    model = net.LinearClassifier(net.cifar_resnet("resnet18"), 512, len(CLASSES))
    cfg = config.LinearEval(batch_size=8, workers=0, precision="fp32", channels_last=False)
    data = loaddataset.linear_eval_data("folder", str(image_folder), 0, 32, MEAN, STD, cfg)
    cpu = torch.device("cpu")
    per_step = trainstage2.PerStepProtocol(model, data, cpu, None, cfg)
    cached = trainstage2.CachedFeaturesProtocol(model, data, cpu, None, cfg)
    assert cached.steps_per_epoch == 3 and len(cached.train_passes[0][1]) == 24
    loss, top1, top5, predictions, labels = per_step.evaluate()
    cached_loss, cached_top1, cached_top5, cached_predictions, cached_labels = cached.evaluate()
    assert cached_loss == pytest.approx(loss, rel=1e-4)
    assert (cached_top1, cached_top5) == (top1, top5)
    assert torch.equal(cached_predictions, predictions) and torch.equal(cached_labels, labels)
    augmented = trainstage2.CachedFeaturesProtocol(
        model,
        data,
        cpu,
        None,
        config.LinearEval(
            batch_size=8, workers=0, precision="fp32", channels_last=False, augmented_passes=2
        ),
    )
    assert len(augmented.train_passes) == 2
    assert not torch.equal(augmented.train_passes[0][0].sum(0), augmented.train_passes[1][0].sum(0))
