"""kNN top-1 of a stage-one encoder on any dataset, or of a random one as the baseline.

The encoder's h (--features z: the head's z) of the plain training images (cut to --subset) is
the memory, the test images are the queries; each of the k nearest votes with exp(cosine similarity / temperature), as in
trainstage1.py's monitor. Dataset, subset, k and temperature are stage one's unless given. The
result is printed and written to the run folder as knn_h.json (knn_z.json, knn_h_random.json).

    python knn.py --run-dir runs/NAME
    python knn.py --run-dir runs/NAME --random
    python knn.py --run-dir runs/NAME --dataset cifar100 --data-dir ./dataset
"""

import dataclasses

import config
import net
from simclr import distributed, errors, evaluate, features, rundir


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Knn, argv)
    distributed.refuse_several_processes("knn.py")
    loaded = features.stage_one(cfg, net.from_stage_one)
    source = features.data_source(cfg, loaded.stage1)
    memory = features.plain_features(loaded, source.split(train=True), cfg, "kNN memory")
    test_split = source.split(train=False, size=cfg.knn_queries)
    queries = features.plain_features(loaded, test_split, cfg, "kNN queries")
    settings = loaded.stage1.settings
    k = cfg.knn_k or settings["knn_k"]
    temperature = cfg.knn_temperature or settings["knn_temperature"]
    memory_vectors, query_vectors = getattr(memory, cfg.features), getattr(queries, cfg.features)
    predictions = evaluate.knn_predict(
        memory_vectors, memory.labels, query_vectors, len(source.class_names), k, temperature
    )
    top1 = 100.0 * (predictions == queries.labels).float().mean().item()
    result_path = loaded.run.path(rundir.KnnResult.file(cfg.features, cfg.random))
    resolved = dataclasses.replace(
        cfg, dataset=source.dataset, data_dir=source.data_dir, subset=source.subset, knn_k=k,
        knn_temperature=temperature,
    )  # fmt: skip
    rundir.KnnResult(
        knn_top1=top1,
        features=cfg.features,
        encoder=loaded.source,
        dataset=source.dataset,
        data_dir=source.data_dir,
        memory_images=len(memory.labels),
        query_images=len(queries.labels),
        knn_k=k,
        knn_temperature=temperature,
        provenance=features.knn_provenance(resolved, loaded, memory, queries),
    ).write(result_path)
    print(
        f"kNN top-1 {top1:.2f}% on {cfg.features} | {loaded.source} | {source.dataset} in "
        f"{source.data_dir}: memory {len(memory.labels):,} training images, queries "
        f"{len(queries.labels):,} test images, k={k}, T={temperature:g}; wrote {result_path}"
    )


if __name__ == "__main__":
    main()
