"""export.py: the encoder as a plain torchvision state dict, loaded by the lines of
docs/inspecting.md alone."""

import os
import re

import pytest
import torch

import net
from conftest import ROOT, load_script


def readme_loading_lines():
    """The Python block of docs/inspecting.md's "An encoder to take away" section."""
    with open(os.path.join(ROOT, "docs", "inspecting.md")) as file:
        page = file.read()
    section = page[page.index("## An encoder to take away") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("stem, size", [("cifar", 32), ("imagenet", 96)])
def test_the_exported_encoder_loads_with_torchvision_alone_and_gives_our_features(
    tmp_path, stem, size
):
    torch.manual_seed(0)
    model = net.SimCLRNet("resnet18", stem=stem)
    model(torch.randn(8, 3, size, size))  # training mode: BatchNorm running statistics move
    checkpoint = {
        "stage": 1, "epoch": 3, "arch": "resnet18", "stem": stem, "feature_dim": 512,
        "image_size": size, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2],
        "model": model.state_dict(), "config": {},
    }  # fmt: skip
    torch.save(checkpoint, tmp_path / "stage1_last.pth")
    load_script("export").main(["--checkpoint", str(tmp_path / "stage1_last.pth")])
    (exported,) = tmp_path.glob("simclr-resnet18-data-*.pth")  # a checkpoint of no run's
    namespace = {"path": str(exported)}
    exec(readme_loading_lines(), namespace)  # imports torch and torchvision, nothing of ours
    encoder = namespace["encoder"]
    assert type(encoder).__module__ == "torchvision.models.resnet"
    saved = torch.load(exported, weights_only=True)
    assert (saved["arch"], saved["stem"], saved["feature_dim"]) == ("resnet18", stem, 512)
    assert saved["mean"] == [0.5, 0.4, 0.3] and saved["image_size"] == size
    images = torch.randn(4, 3, size, size)
    model.eval()
    with torch.no_grad():
        assert torch.equal(encoder.eval()(images), model.encoder(images))
