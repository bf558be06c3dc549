"""Encoder and head shapes, and a stage-two model whose encoder really is frozen."""

import pytest
import torch
import torch.nn as nn

import config
import net


@pytest.mark.parametrize(
    "arch, feature_dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)]
)
def test_cifar_encoder_keeps_32x32_resolution_and_outputs_h(arch, feature_dim):
    encoder = net.resnet_encoder(arch).eval()
    assert encoder.conv1.kernel_size == (3, 3) and encoder.conv1.stride == (1, 1)
    assert encoder.conv1.padding == (1, 1)
    assert isinstance(encoder.maxpool, nn.Identity) and isinstance(encoder.fc, nn.Identity)
    before_pooling = {}

    def record_shape(module, args, output):
        before_pooling["shape"] = output.shape

    encoder.layer4.register_forward_hook(record_shape)
    with torch.no_grad():
        h = encoder(torch.randn(2, 3, 32, 32))
    assert h.shape == (2, feature_dim)
    assert before_pooling["shape"] == (2, feature_dim, 4, 4)


def test_the_imagenet_stem_shrinks_a_96_pixel_image_4x_before_the_first_block():
    encoder = net.resnet_encoder("resnet18", "imagenet").eval()
    assert encoder.conv1.kernel_size == (7, 7) and encoder.conv1.stride == (2, 2)
    assert isinstance(encoder.maxpool, nn.MaxPool2d) and isinstance(encoder.fc, nn.Identity)
    sizes = {}
    encoder.layer1.register_forward_hook(lambda module, args, output: sizes.update(first=output))
    encoder.layer4.register_forward_hook(lambda module, args, output: sizes.update(last=output))
    with torch.no_grad():
        assert encoder(torch.randn(2, 3, 96, 96)).shape == (2, 512)
    assert sizes["first"].shape[-2:] == (24, 24) and sizes["last"].shape[-2:] == (3, 3)
    # the flags' choices, kept as names in config.py, are what the network builds
    assert config.STEMS == net.STEMS and config.ARCHS == tuple(net.FEATURE_DIMS)


def test_unknown_arch_is_refused_with_the_known_ones_named():
    with pytest.raises(ValueError, match="unknown arch 'vgg16' or stem 'cifar'; choose one of "):
        net.resnet_encoder("vgg16")


def test_no_bias_before_batchnorm_and_the_default_head_is_the_configs():
    """A convolution or linear layer followed by BatchNorm has no bias (BatchNorm's shift does
    its job); the head's output size defaults to config's --proj-dim."""
    model = net.SimCLRNet("resnet18")
    assert model.encoder.conv1.bias is None and model.projector[0].bias is None
    assert model.projector[-1].out_features == config.Pretrain().proj_dim


def test_the_linear_classifier_computes_in_float32_under_autocast():
    model = net.LinearClassifier(net.resnet_encoder("resnet18"), 512, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("proj_dim", [128, 64])
def test_simclr_net_returns_h_and_z_through_the_paper_head(proj_dim):
    model = net.SimCLRNet("resnet18", proj_dim)
    layers = list(model.projector)
    assert [type(layer) for layer in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (512, 512)
    assert (layers[3].in_features, layers[3].out_features) == (512, proj_dim)
    h, z = model(torch.randn(4, 3, 32, 32))
    assert h.shape == (4, 512) and z.shape == (4, proj_dim)


def test_a_three_layer_head_is_simclr_v2s_and_the_two_layer_head_keeps_the_old_keys():
    """--proj-layers 3: two d-wide hidden layers with BatchNorm and ReLU, then the output layer;
    the default 2-layer head has exactly the state-dict keys of checkpoints made before the flag."""
    deep = net.SimCLRNet("resnet18", 64, proj_layers=3)
    kinds = [type(layer) for layer in deep.projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert [layer.out_features for layer in deep.projector if isinstance(layer, nn.Linear)] == [
        512,
        512,
        64,
    ]
    assert deep(torch.randn(4, 3, 32, 32))[1].shape == (4, 64)
    old_keys = {"0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"}
    old_keys |= {"1.num_batches_tracked", "3.weight", "3.bias"}
    assert set(net.SimCLRNet("resnet18").projector.state_dict()) == old_keys


def test_linear_classifier_trains_only_the_classifier_and_never_moves_the_encoder():
    model = net.LinearClassifier(net.resnet_encoder("resnet18"), 512, 10)
    encoder_before = {name: tensor.clone() for name, tensor in model.encoder.state_dict().items()}
    classifier_before = model.classifier.weight.detach().clone()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 512 * 10 + 10

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()  # as a training loop would; must not put the encoder's BatchNorm in train mode
    assert model.training and not model.encoder.training
    for _ in range(2):
        images = torch.randn(8, 3, 32, 32) * 3 + 1  # far from the running statistics
        loss = nn.functional.cross_entropy(model(images), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, encoder_before[name]), f"{name} changed"
    assert not torch.equal(model.classifier.weight, classifier_before)
