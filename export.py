"""Export a stage-one encoder for use elsewhere: a plain torchvision ResNet state dict.

Reads the stage-one checkpoint of the newest run (or --run-dir, or --checkpoint) and writes encoder.pth
beside it (or --output): {"arch", "stem", "feature_dim", "image_size", "mean", "std",
"state_dict"}, where state_dict loads into torchvision.models.<arch>() (with the CIFAR stem
swapped in where "stem" is "cifar") and fc replaced by an identity; no code of this repository is
needed (README, "An encoder to take away", shows the lines).

    python export.py --run-dir runs/NAME
"""

import os

import config
import net
from simclr import checkpoints, errors


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Export, argv)
    _, checkpoint_path = checkpoints.locate(1, cfg.run_dir, cfg.checkpoint, needs_run=False)
    checkpoint = checkpoints.load(checkpoint_path, stage=1)
    checkpoints.note_unfinished(checkpoint, checkpoint_path, os.path.dirname(checkpoint_path))
    encoder = net.from_stage_one(checkpoint, checkpoint_path, encoder_only=True)
    output = cfg.output or os.path.join(os.path.dirname(checkpoint_path), "encoder.pth")
    exported = {key: checkpoint[key] for key in ("arch", "stem", "feature_dim", "image_size")}
    exported |= {"mean": list(checkpoint["mean"]), "std": list(checkpoint["std"])}
    checkpoints.save(output, exported | {"state_dict": encoder.state_dict()})
    print(
        f"wrote {output}: a torchvision {checkpoint['arch']} state dict with the "
        f"{checkpoint['stem']} stem (fc = identity), features of "
        f"{checkpoint['feature_dim']} dimensions; from {checkpoint_path} "
        f"({checkpoints.trained_for(checkpoint)})"
    )


if __name__ == "__main__":
    main()
