"""torch.hub's entry points: a SimCLR encoder that export.py wrote, as a torchvision ResNet whose
output is h, the representation the paper evaluates, in eval mode.

    encoder = torch.hub.load("PATH/TO/THIS/CLONE", "encoder", source="local", card="CARD.json")

A published model is one entry of simclr/published.json (its name, the URLs of its weights and
card, its figure and protocol); none is published until a GPU run has made one, and asking for one
before says so in one line. Loading needs torch and torchvision alone.
"""

import json
import os

import torch

from simclr import cards

dependencies = ["torch", "torchvision"]

PUBLISHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "simclr", "published.json")


def encoder(card, weights=None):
    """The encoder a card describes (docs/card.md), its weights beside the card (or at weights),
    checked against the card's sha256. Feed it images at the card's encoder.image_size,
    normalised with its encoder.mean and encoder.std."""
    return cards.load_encoder(card, weights)[1]


def published(name):
    """A published model's entry of simclr/published.json, or a one-line error naming what is."""
    with open(PUBLISHED) as file:
        entries = json.load(file)
    if name not in entries:
        known = ", ".join(entries) or "none yet: a GPU run publishes the first"
        raise RuntimeError(
            f"{name} is not published (published: {known}); load a card of your own with "
            f"torch.hub.load(..., 'encoder', card='CARD.json')"
        )
    return entries[name]


def simclr_resnet18_cifar10(pretrained=True, card=None):
    """ResNet-18 (CIFAR stem) pretrained with SimCLR on CIFAR-10's 50,000 training images; its
    figures and their protocol are those of its card (simclr/published.json: not published yet).
    card: a card of your own of the same network instead; pretrained=False: random weights."""
    if not pretrained:
        return cards.encoder_from({"arch": "resnet18", "stem": "cifar"}, load=False)
    if card:
        found = cards.read_card(card)
        made = (found["encoder"]["arch"], found["encoder"]["stem"], found["data"]["dataset"])
        if made != ("resnet18", "cifar", "cifar10"):
            raise RuntimeError(
                f"card {card} is of a {made[0]} ({made[1]} stem) on {made[2]}, not "
                f"simclr_resnet18_cifar10's: load it with torch.hub.load(..., 'encoder', card=...)"
            )
        return encoder(card)
    entry = published("simclr_resnet18_cifar10")
    folder = os.path.join(torch.hub.get_dir(), "simclr")
    os.makedirs(folder, exist_ok=True)
    card_path = os.path.join(folder, os.path.basename(entry["card_url"]))
    torch.hub.download_url_to_file(entry["card_url"], card_path, progress=False)
    weights_path = os.path.join(folder, os.path.basename(entry["weights_url"]))
    if not os.path.isfile(weights_path):
        torch.hub.download_url_to_file(entry["weights_url"], weights_path, progress=True)
    return encoder(card_path, weights_path)
