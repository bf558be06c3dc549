"""An exported encoder's card (docs/card.md): its form, and loading the encoder it describes with
torch and torchvision alone.

export.py writes the weights under a name that carries their content, NAME-HASH.pth with HASH the
first HASH_DIGITS hex digits of the file's sha256 (the form torch.hub's check_hash reads), and the
card beside them, NAME-HASH.json, read from the run folder's records. check.py re-measures a card;
hubconf.py loads one. This module imports nothing of the repository beyond itself, so that
torch.hub's loading needs torch and torchvision only.
"""

import hashlib
import json
import os
import re

import torch
import torchvision

CARD_VERSION = 1
HASH_DIGITS = 10
WEIGHTS_NAME = re.compile(r"-([0-9a-f]{8,})\.pth$")  # torch.hub's check_hash reads this part
# what check.py and hubconf.py read of a card: (section, key) each
NEEDED = (
    ("weights", "file"),
    ("weights", "sha256"),
    ("encoder", "arch"),
    ("encoder", "stem"),
    ("encoder", "image_size"),
    ("encoder", "mean"),
    ("encoder", "std"),
    ("data", "dataset"),
    ("evaluations", None),
)


class CardError(Exception):
    """A card, or the weights it names, that cannot be read or does not match: one line."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path_of(weights_path):
    """NAME-HASH.pth -> NAME-HASH.json beside it."""
    return weights_path[: -len(".pth")] + ".json"


def weights_beside(card_path, card):
    """Where the weights a card names are by default: beside the card."""
    return os.path.join(os.path.dirname(os.path.abspath(card_path)), card["weights"]["file"])


def read_card(path):
    """A card as a dict; a missing file, one that is no JSON object, or one without a field that
    check.py and hubconf.py read -> CardError naming it."""
    if not os.path.isfile(path):
        raise CardError(f"card {path} does not exist: pass the .json that export.py wrote")
    try:
        with open(path) as file:
            card = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CardError(f"card {path} is not JSON ({error}): pass the .json that export.py wrote")
    if not isinstance(card, dict):
        raise CardError(f"card {path} is a JSON {type(card).__name__}, not a card")
    for section, key in NEEDED:
        part = card.get(section)
        if part is None or (key is not None and (not isinstance(part, dict) or key not in part)):
            field = section if key is None else f"{section}.{key}"
            raise CardError(f"card {path} has no {field}: export the encoder again with export.py")
    return card


def check_weights(weights_path, card):
    """The weights file must be the card's: its sha256 the card's, and the hash in its name, where
    it has one, a prefix of it -> CardError otherwise."""
    if not os.path.isfile(weights_path):
        raise CardError(
            f"weights {weights_path} do not exist: put {card['weights']['file']} beside the card, "
            f"or pass --weights PATH or URL"
        )
    found, recorded = sha256_of(weights_path), card["weights"]["sha256"]
    named = WEIGHTS_NAME.search(os.path.basename(weights_path))
    if found != recorded or (named and not recorded.startswith(named.group(1))):
        raise CardError(
            f"weights {weights_path} are not the card's: their sha256 is {found[:16]}..., the "
            f"card's {recorded[:16]}...; fetch the weights again"
        )


def encoder_from(saved, load=True):
    """A torchvision ResNet of export.py's saved dict, its fc the identity (its output is h),
    with the CIFAR stem where it was trained so, its weights loaded strictly (load False: left
    random), in eval mode."""
    encoder = getattr(torchvision.models, saved["arch"])(weights=None)
    if saved["stem"] == "cifar":  # 3x3 stride-1 first conv and no max-pool, as trained
        encoder.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        encoder.maxpool = torch.nn.Identity()
    encoder.fc = torch.nn.Identity()
    if load:
        encoder.load_state_dict(saved["state_dict"])
    return encoder.eval()


def load_encoder(card_path, weights_path=None):
    """-> (the card, the encoder it describes, its weights checked against it): the weights beside
    the card unless weights_path says where they are."""
    card = read_card(card_path)
    weights_path = weights_path or weights_beside(card_path, card)
    check_weights(weights_path, card)
    return card, encoder_from(torch.load(weights_path, map_location="cpu", weights_only=True))
