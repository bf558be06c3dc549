"""What both data paths hand back, by name: stage one's three loaders and stage two's three, the
same fields whether the images come from uint8 tensors on the device (loaders_device.py) or from
PIL transforms in DataLoader workers (loaders_workers.py)."""

import typing


class PretrainLoaders(typing.NamedTuple):
    views: typing.Iterable  # ((x1, x2), labels): augmented view pairs, training and unlabelled
    memory: typing.Iterable  # (images, labels): the plain training split, the kNN memory
    test: typing.Iterable  # (images, labels): the plain test images the kNN monitor classifies


class StageTwoLoaders(typing.NamedTuple):
    train: typing.Iterable  # the labelled training images with crop + flip
    plain_train: typing.Iterable  # the same images, plain (the cached-features protocol)
    test: typing.Iterable  # the whole plain test split
    validation: typing.Optional[typing.Iterable] = None  # the held-out training images, plain
