"""The networks and the loss: ResNet encoder (CIFAR or ImageNet stem), projection head, NT-Xent,
linear classifier."""

import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
import torchvision

from simclr import checkpoints, distributed
from simclr.errors import InputError

FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
# The layers before the first block, saved in checkpoints so that loaders can check. cifar: a 3x3
# stride-1 conv and no max-pool; imagenet: torchvision's 7x7 stride-2 conv and 3x3 stride-2
# max-pool, which shrink the image 4x per side before the first block.
STEMS = ("cifar", "imagenet")


def resnet_encoder(arch, stem="cifar"):
    """torchvision ResNet without fc: (B, 3, H, W) -> h of shape (B, FEATURE_DIMS[arch])."""
    if arch not in FEATURE_DIMS or stem not in STEMS:
        raise ValueError(
            f"unknown arch {arch!r} or stem {stem!r}; choose one of {', '.join(FEATURE_DIMS)} "
            f"and one of {', '.join(STEMS)}"
        )
    encoder = getattr(torchvision.models, arch)(weights=None)
    if stem == "cifar":
        # The ImageNet stem shrinks a 32x32 image to 8x8 before the first block and costs several
        # points of accuracy on CIFAR; the paper's CIFAR variant keeps 32x32.
        encoder.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        encoder.maxpool = nn.Identity()
    encoder.fc = nn.Identity()
    return encoder


class ProjectionHead(nn.Sequential):
    """g(.) of the paper: layers linear layers, each but the last followed by BatchNorm and ReLU,
    d wide up to the last, which gives proj_dim. 2 layers: the SimCLR paper's head, Linear(d, d)
    -> BatchNorm1d -> ReLU -> Linear(d, proj_dim); 3: SimCLRv2's, which fine-tunes from its
    middle; 1: a linear head; 0: none, z = h (the paper's Figure 8 compares the three). Flat, so
    that the 2-layer head keeps the keys of checkpoints made before --proj-layers."""

    def __init__(self, feature_dim, proj_dim, layers=2):
        hidden = []
        for _ in range(layers - 1):
            # BatchNorm follows each hidden layer: a bias there is redundant
            hidden += [nn.Linear(feature_dim, feature_dim, bias=False), nn.BatchNorm1d(feature_dim)]
            hidden.append(nn.ReLU(inplace=True))
        output = [nn.Linear(feature_dim, proj_dim)] if layers else []
        super().__init__(*hidden, *output)
        self.layers, self.feature_dim = layers, feature_dim
        self.out_dim = proj_dim if layers else feature_dim

    def first_layers(self, count):
        """-> (the modules of the first count layers, each hidden one with its BatchNorm and
        ReLU; their output width): what SimCLRv2 keeps under a classifier."""
        checkpoints.check_head_layer(count, self.layers)
        if count == self.layers:  # the whole head: z, after the last layer, which has no BatchNorm
            return list(self), self.out_dim
        return list(self)[: 3 * count], self.feature_dim


@contextlib.contextmanager
def running_statistics_kept(module):
    """BatchNorm in module normalises with the batch's statistics as usual but leaves its running
    ones (and num_batches_tracked) as they were: a recomputed forward must not count the batch a
    second time. Momentum 0 rather than no tracking, so that the recomputation saves the same
    tensors for the backward pass as the first forward did."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, batches) in zip(norms, kept):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(batches)


def recomputed(stage, x):
    """stage(x), its activations recomputed in the backward pass instead of kept: the same
    output and gradients, the stage's BatchNorm statistics updated once, by the first pass."""
    return torch.utils.checkpoint.checkpoint(
        stage,
        x,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), running_statistics_kept(stage)),
    )


def stages(encoder):
    """resnet_encoder's four stages of residual blocks."""
    return encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4


def encode(encoder, x, recompute=False):
    """resnet_encoder's forward; recompute: each of its four stages recomputed in the backward
    pass (--activation-checkpointing): about a third more compute, a fraction of the memory."""
    if not recompute:
        return encoder(x)
    x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
    for stage in stages(encoder):
        x = recomputed(stage, x)
    return torch.flatten(encoder.avgpool(x), 1)


def compile_stages(encoder):
    """torch.compile each stage in place (the weights' names unchanged), for --compile with
    --activation-checkpointing: torch.compile cannot trace the recomputation around a stage (the
    context that keeps BatchNorm's running statistics), so it compiles what runs inside it."""
    for stage in stages(encoder):
        stage.compile()


class SimCLRNet(nn.Module):
    """Encoder f and projection head g; forward(x) returns (h, z) = (f(x), g(f(x))).
    recompute_activations: the encoder's stages recomputed in the backward pass while training
    (net.encode), which changes memory and time, never the numbers."""

    def __init__(self, arch, proj_dim=128, stem="cifar", proj_layers=2):
        super().__init__()
        self.feature_dim = FEATURE_DIMS[arch]
        self.encoder = resnet_encoder(arch, stem)
        self.projector = ProjectionHead(self.feature_dim, proj_dim, proj_layers)
        self.recompute_activations = False

    def forward(self, x):
        recompute = self.recompute_activations and self.training and torch.is_grad_enabled()
        h = encode(self.encoder, x, recompute)
        return h, self.projector(h)


def contrastive_logits(z1, z2, temperature, across_ranks=False):
    """z1, z2: (n, D) projections of two views -> logits (2n, 2N) in float32 and targets (2n,).

    Row i holds the similarities of anchor i with all 2N views, itself masked out with -inf. In
    one process N = n. With across_ranks (under torchrun), the anchors are this rank's 2n views and
    the candidates all 2N views of the global batch, gathered from every rank with their gradient;
    the mean of the ranks' losses is then the one-process loss of the global batch.
    """
    n = z1.shape[0]
    # Autocast off and float32: exp(sim / 0.1) and the -inf mask are not safe in half precision.
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        anchors = torch.cat([z1, z2])
        candidates, offset, total = anchors, 0, n
        if across_ranks:  # every rank's views: (N, D) each
            z1, z2 = distributed.all_gather_with_grad(z1), distributed.all_gather_with_grad(z2)
            candidates, offset, total = torch.cat([z1, z2]), n * dist.get_rank(), len(z1)
        logits = anchors @ candidates.T / temperature
    # Views are stacked [x1 of images 0..N-1, x2 of images 0..N-1] and this rank's images are
    # offset..offset+n-1 of them: anchor i (a first view) sits in column offset + i and its positive
    # in column N + offset + i; anchor n + i (a second view) the other way round.
    own = torch.arange(n, device=logits.device) + offset
    columns, positives = torch.cat([own, own + total]), torch.cat([own + total, own])
    # -inf, not a large negative constant: exp(-inf) is exactly 0, so an anchor never counts
    # itself as a candidate, and nothing can overflow.
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * n, device=logits.device), columns] = True
    # The targets are not class labels: row i's "correct class" is the column of the other view of
    # the same image. Cross-entropy over a row is then exactly the paper's
    # -log(exp(s_pos / t) / sum over the 2N-1 other views exp(s_k / t)).
    return logits.masked_fill(self_mask, float("-inf")), positives


def nt_xent(z1, z2, temperature):
    """z1, z2: (N, D) projections of two views of the same N images -> scalar NT-Xent loss.

    The mean over all 2N anchors (both views are anchors), as in the paper's symmetric loss.
    """
    logits, targets = contrastive_logits(z1, z2, temperature)
    return F.cross_entropy(logits, targets)


# The squared norm a linear probe's centred features are scaled to. SGD's step on a linear
# classifier grows with the squared norm of what it reads, so one fixed norm lets one lr (0.1 per
# 256 images) train the probe of any encoder stably; chosen on labelled training images held out
# from three ResNet-18 encoders' probes (BENCHMARKS.md, "A probe that does not climb").
FEATURE_SQUARED_NORM = 50.0


class FeatureNorm(nn.Module):
    """A linear probe's features, centred and scaled: each dimension less its mean, then all of
    them divided by one number, so that their mean squared norm is FEATURE_SQUARED_NORM. Both are
    linear maps, so the probe stays a linear classifier of the features; they change only how SGD
    gets there. The features of a CIFAR ResNet are all positive after its last ReLU and share a
    large mean, and their spread differs from one encoder to the next by an order of magnitude:
    on raw features the paper's lr overshot and the probe's loss climbed for epochs before it fell,
    centred alone it still climbed on some encoders. Each dimension scaled on its own (BatchNorm
    without affine, as MoCo v3 and MAE probe) climbed too, and fitted the noise of a weak
    encoder's nearly constant dimensions (BENCHMARKS.md, "A probe that does not climb").
    The mean and the spread are those of every batch seen so far, in training and at test alike:
    a frozen encoder's features do not drift, and the first batch already gives close estimates.
    The target norm is a buffer, so a checkpoint keeps the one it was trained with."""

    def __init__(self, width, squared_norm=FEATURE_SQUARED_NORM):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_squared_norm", torch.ones(()))  # of the centred features
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("squared_norm", torch.tensor(float(squared_norm)))

    def forward(self, h):
        if self.training:
            with torch.no_grad():  # tensors only: reading the count back would stall a GPU
                self.batches_seen += 1
                rate = 1.0 / self.batches_seen
                batch_mean = h.mean(0)
                self.running_mean += (batch_mean - self.running_mean) * rate
                spread = (h - batch_mean).pow(2).sum(1).mean()
                averaged = self.running_squared_norm + (spread - self.running_squared_norm) * rate
                if len(h) == 1:  # a last batch of one image has no spread to add
                    averaged = self.running_squared_norm
                # the first batch replaces the placeholder of 1, never averages with it
                self.running_squared_norm.copy_(
                    torch.where(self.batches_seen == 1, spread, averaged)
                )
        scale = (self.squared_norm / self.running_squared_norm.clamp(min=1e-12)).sqrt()
        return (h - self.running_mean) * scale


class LinearClassifier(nn.Module):
    """Stage two: an encoder, and under SimCLRv2's fine-tuning from the head's middle the first
    layers of the projection head, under a trainable Linear(width, num_classes); the encoder and
    head layers frozen (linear evaluation) or trained with it (fine-tuning, training from scratch,
    distillation). kept_head: ProjectionHead.first_layers' modules; none: the classifier reads h.
    feature_norm: FeatureNorm between what the classifier reads and the classifier.
    """

    def __init__(self, encoder, width, num_classes, frozen=True, kept_head=(), feature_norm=False):
        super().__init__()
        self.encoder, self.frozen = encoder, frozen
        self.head = nn.Sequential(*kept_head)  # empty: no keys, the checkpoints of before
        # nn.Identity has no keys either: stage2.pth files of before still load
        self.feature_norm = FeatureNorm(width) if feature_norm else nn.Identity()
        self.classifier = nn.Linear(width, num_classes)
        if frozen:
            for parameter in self.representation().parameters():
                parameter.requires_grad = False  # on each tensor: a module flag freezes nothing
            self.representation().eval()

    def representation(self):
        """What the classifier reads: the encoder and the head layers kept under it."""
        return nn.Sequential(self.encoder, self.head)

    @property
    def normalises_features(self):
        return isinstance(self.feature_norm, FeatureNorm)

    def probe(self):
        """What trains on the features: their normalisation and the classifier."""
        return nn.Sequential(self.feature_norm, self.classifier)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            # eval() always: in train mode a frozen encoder still updates its BatchNorm running
            # statistics, so the features (and the reported accuracy) would drift in stage two.
            self.representation().eval()
        return self

    def forward(self, x):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            h = self.head(self.encoder(x))
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.probe()(h.float())  # the classifier trains in float32 under autocast


def check_buildable(checkpoint, path):
    """A one-line error where a checkpoint holds a network this code does not build."""
    if checkpoint.get("stem") not in STEMS or checkpoint.get("arch") not in FEATURE_DIMS:
        raise InputError(
            f"{path} holds a {checkpoint.get('arch')} with a {checkpoint.get('stem')} stem;"
            f" this code builds {', '.join(FEATURE_DIMS)} with the {' or '.join(STEMS)} stem"
        )


def from_stage_one(checkpoint, path, with_weights=True, encoder_only=False):
    """The SimCLRNet of a stage-one checkpoint (checkpoints.load), its weights loaded strictly,
    or its encoder alone (encoder_only: no head is built, so no head draws random numbers);
    with_weights False: the same architecture freshly initialised (the baselines)."""
    check_buildable(checkpoint, path)
    arch, stem, weights = checkpoint["arch"], checkpoint["stem"], checkpoint.get("model")
    if encoder_only:
        model, weights = resnet_encoder(arch, stem), weights and checkpoints.encoder_state(weights)
    else:
        settings = checkpoint["config"]
        model = SimCLRNet(arch, settings["proj_dim"], stem, checkpoints.proj_layers_of(settings))
    if with_weights:
        checkpoints.load_strictly(model, weights, path)
    return model


def classifier_on_stage_one(stage1, num_classes, from_head_layer, pretrained, frozen, norm):
    """A new LinearClassifier on the encoder of stage1 (a checkpoints.StageOne) and its first
    from_head_layer head layers, with its weights (pretrained) or freshly initialised, frozen or
    not, with or without FeatureNorm under its classifier (norm)."""
    built = {"arch": stage1.arch, "stem": stage1.stem, "config": stage1.settings}
    built |= {"model": stage1.checkpoint["model"]} if pretrained else {}
    if not from_head_layer:  # the encoder alone: no head is built, so none draws random numbers
        encoder = from_stage_one(built, stage1.path, pretrained, encoder_only=True)
        width, kept_head = stage1.feature_dim, ()
    else:
        network = from_stage_one(built, stage1.path, pretrained)
        encoder = network.encoder
        kept_head, width = network.projector.first_layers(from_head_layer)
    return LinearClassifier(encoder, width, num_classes, frozen, kept_head, norm)


def from_stage_two(checkpoint, path):
    """The LinearClassifier of a stage-two checkpoint, its weights loaded strictly."""
    check_buildable(checkpoint, path)
    encoder = resnet_encoder(checkpoint["arch"], checkpoint["stem"])
    from_head_layer = checkpoint.get("from_head_layer", 0)  # 0 before SimCLRv2's fine-tuning
    kept_head, width = [], checkpoint["feature_dim"]
    if from_head_layer:
        settings = checkpoint["stage1_config"]
        head = ProjectionHead(width, settings["proj_dim"], checkpoints.proj_layers_of(settings))
        kept_head, width = head.first_layers(from_head_layer)
    classes = len(checkpoint["class_names"])
    norm = checkpoint.get("feature_norm", False)  # False before the probe normalised them
    model = LinearClassifier(encoder, width, classes, True, kept_head, norm)
    checkpoints.load_strictly(model, checkpoint["model"], path)
    return model
