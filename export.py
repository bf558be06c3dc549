"""Export a stage-one encoder for use elsewhere: a plain torchvision ResNet state dict.

Reads stage1_last.pth of the newest run (or --run-dir, or --checkpoint) and writes encoder.pth
beside it (or --output): {"arch", "stem", "feature_dim", "image_size", "mean", "std",
"state_dict"}, where state_dict loads into torchvision.models.<arch>() (with the CIFAR stem
swapped in where "stem" is "cifar") and fc replaced by an identity; no code of this repository is
needed (README, "An encoder to take away", shows the lines).

    python export.py --run-dir runs/NAME
"""

import os

import config
import errors
import net
import rundir


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Export, argv)
    if cfg.checkpoint:
        checkpoint_path = cfg.checkpoint
    else:
        run_dir = rundir.resolve_run_dir(cfg.run_dir, "stage1_last.pth")
        checkpoint_path = os.path.join(run_dir, "stage1_last.pth")
    checkpoint = rundir.load_checkpoint(checkpoint_path, stage=1)
    encoder = net.resnet_encoder(checkpoint["arch"], checkpoint["stem"])
    rundir.load_strictly(encoder, net.encoder_state(checkpoint["model"]), checkpoint_path)
    output = cfg.output or os.path.join(os.path.dirname(checkpoint_path), "encoder.pth")
    exported = {key: checkpoint[key] for key in ("arch", "stem", "feature_dim", "image_size")}
    exported |= {"mean": list(checkpoint["mean"]), "std": list(checkpoint["std"])}
    rundir.save_checkpoint(output, exported | {"state_dict": encoder.state_dict()})
    print(
        f"wrote {output}: a torchvision {checkpoint['arch']} state dict with the "
        f"{checkpoint['stem']} stem (fc = identity), features of "
        f"{checkpoint['feature_dim']} dimensions; from {checkpoint_path} "
        f"(epoch {checkpoint['epoch']})"
    )


if __name__ == "__main__":
    main()
