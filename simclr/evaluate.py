"""Measuring an encoder without training it: feature extraction and the weighted kNN monitor."""

import torch
import torch.nn.functional as F

from simclr import distributed
from simclr import runtime

KNN_QUERY_CHUNK = 1024  # test images compared with the whole memory bank at once
# knn_predict's version, which knn.py's results record: bumped whenever it votes otherwise
KNN_VERSION = 1


@torch.no_grad()
def extract_features(encoder, data_loader, encoding, description="features", stop=None):
    """h of every image of the loader, in order -> (features (M, d) float32, labels (M,)), or
    None when stop (a runtime.StopSignal) receives a signal before the pass ends. The encoder runs
    in eval mode, whatever its mode, and is given its mode back."""
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    quiet = not distributed.is_main()  # under torchrun, rank 0 shows the bar
    batches = runtime.progress(
        data_loader, desc=description, unit="batch", leave=False, disable=quiet
    )
    for images, batch_labels in batches:
        if stop is not None and stop.received:
            encoder.train(was_training)
            return None
        with encoding.autocast():
            features.append(encoder(encoding.inputs(images)).float())
        labels.append(batch_labels.to(encoding.device))
    encoder.train(was_training)
    return torch.cat(features), torch.cat(labels)


def knn_predict(memory_features, memory_labels, query_features, num_classes, k, temperature):
    """Weighted cosine kNN (Wu et al. 2018): each of the k nearest votes exp(sim / temperature)."""
    memory_features = F.normalize(memory_features, dim=1)
    query_features = F.normalize(query_features, dim=1)
    k = min(k, len(memory_features))
    predictions = []
    for queries in query_features.split(KNN_QUERY_CHUNK):
        similarity, neighbours = (queries @ memory_features.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), num_classes, device=queries.device)
        votes.scatter_add_(1, memory_labels[neighbours], (similarity / temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def knn_top1(encoder, memory_loader, query_loader, encoding, k, temperature, stop=None):
    """kNN top-1 in percent: training images (no augmentation) as memory, test images as queries;
    None if stop receives a signal during the passes.

    Under torchrun the loaders hold this rank's shard of each (padded rows labelled -1): each rank
    encodes its shard of the memory bank, the ranks gather it whole, and each classifies its own
    queries; the correct answers are summed over the ranks."""
    memory = extract_features(encoder, memory_loader, encoding, "kNN memory", stop)
    queries = (
        None
        if memory is None
        else extract_features(encoder, query_loader, encoding, "kNN queries", stop)
    )
    if queries is None:
        return None
    (memory_features, memory_labels), (query_features, query_labels) = memory, queries
    memory_features, memory_labels = map(distributed.gathered, (memory_features, memory_labels))
    real = memory_labels >= 0
    memory_features, memory_labels = memory_features[real], memory_labels[real]
    num_classes = int(torch.cat([memory_labels, query_labels]).max()) + 1
    predictions = knn_predict(
        memory_features, memory_labels, query_features, num_classes, k, temperature
    )
    counts = torch.stack([(predictions == query_labels).sum(), (query_labels >= 0).sum()])
    if distributed.world_size() > 1:
        counts = distributed.summed_over_ranks(counts)
    correct, queries_counted = counts.tolist()
    return 100.0 * correct / queries_counted


def topk_correct(logits, labels, ks=(1, 5)):
    """Number of rows whose label is among the top-k logits, for each k (k capped at classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, :k].any(1).sum().item() for k in ks]
