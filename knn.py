"""kNN top-1 of a stage-one encoder on any dataset, or of a random one as the baseline.

The encoder's h of the plain training images (cut to --subset) is the memory, the test images are
the queries; each of the k nearest votes with exp(cosine similarity / temperature), as in
trainstage1.py's monitor. Dataset, subset, k and temperature are stage one's unless given.

    python knn.py --run-dir runs/NAME
    python knn.py --run-dir runs/NAME --random
    python knn.py --run-dir runs/NAME --dataset cifar100 --data-dir ./dataset
"""

import config
import net
from simclr import distributed, errors, evaluate, features


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Knn, argv)
    distributed.refuse_several_processes("knn.py")
    stage1 = features.stage_one(cfg, net.from_stage_one)
    source = features.data_source(cfg, stage1.checkpoint)
    memory = features.plain_features(stage1, source.split(train=True), cfg, "kNN memory")
    test_split = source.split(train=False, size=cfg.knn_queries)
    queries = features.plain_features(stage1, test_split, cfg, "kNN queries")
    settings = stage1.checkpoint["config"]
    k = cfg.knn_k or settings["knn_k"]
    temperature = cfg.knn_temperature or settings["knn_temperature"]
    predictions = evaluate.knn_predict(
        memory.h, memory.labels, queries.h, len(source.class_names), k, temperature
    )
    top1 = 100.0 * (predictions == queries.labels).float().mean().item()
    print(
        f"kNN top-1 {top1:.2f}% | {stage1.source} | {source.dataset} in {source.data_dir}: "
        f"memory {len(memory.labels):,} training images, queries {len(queries.labels):,} test "
        f"images, k={k}, T={temperature:g}"
    )


if __name__ == "__main__":
    main()
