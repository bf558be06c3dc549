"""Pictures of what a stage-one encoder learned, written into the run folder.

tsne.png: a t-SNE (scikit-learn) of h and of z for a seeded class-balanced choice of test images,
coloured by class, as in the paper's Figure B.4: classes separate better in h than in z, the
projection that the contrastive loss makes invariant.
neighbours.png: a seeded choice of test images, one row each, with their nearest training images
by cosine similarity of h (--features z: of z), each labelled with its class and similarity; a wrong class in red.
With --random both show a randomly initialised encoder (tsne_random.png, neighbours_random.png).
On a folder without labels (stage one's own photos) both show its images, without classes.

    python pictures.py --run-dir runs/NAME
"""

import matplotlib

matplotlib.use("Agg")  # before pyplot: draws to files, over ssh and in CI alike
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

import config  # noqa: E402
from simclr import errors  # noqa: E402
import net  # noqa: E402
from simclr import datasets, distributed, features  # noqa: E402
from simclr import plotting  # noqa: E402
from simclr import rundir  # noqa: E402

TSNE_PERPLEXITY = 30  # scikit-learn's default; the t-SNE of fewer images uses at most images - 1
LEGEND_MAX_CLASSES = 20  # above this (CIFAR-100) the legend would hide the picture
WRONG_CLASS_COLOUR = "red"


def tsne_2d(vectors, seed):
    """(N, d) vectors -> (N, 2) t-SNE coordinates, seeded."""
    perplexity = min(TSNE_PERPLEXITY, len(vectors) - 1)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(vectors.cpu().numpy())


def draw_tsne(test, class_names, titles, seed):
    """Two panels, t-SNE of h and of z, one colour per class (one for all, without classes)
    -> the figure."""
    figure, axes = plt.subplots(1, 2, figsize=(13, 6))
    labels = test.labels.cpu().numpy()
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for panel, (name, vectors) in zip(axes, (("h", test.h), ("z", test.z))):
        points = tsne_2d(vectors, seed)
        if not class_names:
            panel.scatter(*points.T, s=6, color=colours(0))
        for label, class_name in enumerate(class_names):
            chosen = labels == label
            colour = colours(label % colours.N)
            panel.scatter(*points[chosen].T, s=6, color=colour, label=class_name)
        panel.set(title=f"{name} ({vectors.shape[1]} dimensions)", xticks=[], yticks=[])
    if class_names and len(class_names) <= LEGEND_MAX_CLASSES:
        axes[1].legend(loc="center left", bbox_to_anchor=(1, 0.5), markerscale=3, frameon=False)
    plotting.fitted_title(figure, *titles)
    figure.tight_layout()
    return figure


def nearest(query_h, memory_h, k, own=None):
    """-> (cosine similarities, indices into memory) of each query's k nearest, nearest first;
    own: each query's own index in memory (queries drawn from the memory), never its neighbour."""
    similarity = F.normalize(query_h, dim=1) @ F.normalize(memory_h, dim=1).T
    if own is not None:
        similarity[torch.arange(len(own)), torch.as_tensor(own)] = -float("inf")
    return similarity.topk(min(k, len(memory_h) - (own is not None)), dim=1)


def draw_neighbours(queries, query_split, memory, memory_split, class_names, neighbours, titles):
    """One row per query: the query, then its nearest memory images (neighbours: nearest's
    similarities and indices), each with its class where there are classes -> the figure."""
    similarities, indices = neighbours
    columns = 1 + indices.shape[1]
    figure, axes = plt.subplots(
        len(indices), columns, figsize=(1.3 * columns, 1.5 * len(indices)), squeeze=False
    )
    named = [f"{name} " for name in class_names]
    for row, query_label in enumerate(queries.labels.tolist()):
        query = f"test: {class_names[query_label]}" if class_names else "image"
        show(axes[row, 0], query_split[row][0], query, "black")
        for column, (similarity, index) in enumerate(zip(similarities[row], indices[row]), 1):
            label = memory.labels[index].item()
            colour = "black" if label == query_label else WRONG_CLASS_COLOUR
            text = f"{named[label] if class_names else ''}{similarity:.2f}"
            show(axes[row, column], memory_split[index.item()][0], text, colour)
    plotting.fitted_title(figure, *titles)
    figure.tight_layout()
    return figure


def show(axes, image, text, colour):
    axes.imshow(np.asarray(image), interpolation="nearest")
    axes.set_title(text, fontsize=7, color=colour)
    axes.set(xticks=[], yticks=[])
    for spine in axes.spines.values():
        spine.set(color=colour, linewidth=3 if colour == WRONG_CLASS_COLOUR else 0.5)


def save(figure, path):
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path}")


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Pictures, argv)
    distributed.refuse_several_processes("pictures.py")
    loaded = features.stage_one(cfg, net.from_stage_one)
    source = features.data_source(cfg, loaded.stage1, labels_optional=True)
    suffix = "_random" if cfg.random else ""
    name = f"{rundir.run_name(loaded.run.dir)}, {loaded.weights}"  # the run named once
    # the test images, with their classes; a folder without labels: its own images
    pictured, images = (False, f"{source.dataset} test images") if source.labelled else (
        True, f"images of {source.data_dir}, without labels"
    )  # fmt: skip
    if not source.labelled:
        print(f"note: {source.why_no_labels}: the pictures show its images, without classes")

    tsne_split = source.split(train=pictured, size=cfg.tsne_images)
    test = features.plain_features(loaded, tsne_split, cfg, "t-SNE images")
    titles = (name, f"t-SNE of {len(test.labels):,} {images}")
    figure = draw_tsne(test, source.class_names, titles, cfg.seed)
    save(figure, loaded.run.path(f"tsne{suffix}.png"))

    query_split = source.split(train=pictured, size=cfg.neighbour_rows)
    queries = features.plain_features(loaded, query_split, cfg, "neighbour grid queries")
    memory_split = source.split(train=True)
    memory = features.plain_features(loaded, memory_split, cfg, "training images")
    among = "training images" if source.labelled else "its images"
    titles = (
        name,
        f"nearest of {len(memory.labels):,} {among} by cosine similarity of {cfg.features}",
    )
    own = None
    if pictured:  # the queries are among the memory: each one's own place there
        places = {
            index: place for place, index in enumerate(datasets.indices_in_whole(memory_split))
        }
        own = [places[index] for index in datasets.indices_in_whole(query_split)]
    neighbours = nearest(
        getattr(queries, cfg.features), getattr(memory, cfg.features), cfg.neighbours, own
    )
    figure = draw_neighbours(
        queries, query_split, memory, memory_split, source.class_names, neighbours, titles
    )
    save(figure, loaded.run.path(f"neighbours{suffix}.png"))


if __name__ == "__main__":
    main()
