"""Measuring an encoder without training it: feature extraction and the weighted kNN monitor."""

import torch
import torch.nn.functional as F
from tqdm import tqdm

KNN_QUERY_CHUNK = 1024  # test images compared with the whole memory bank at once


@torch.no_grad()
def extract_features(encoder, data_loader, device, autocast_dtype=None, channels_last=False):
    """h of every image of the loader, in order -> (features (M, d) float32, labels (M,))."""
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    for images, batch_labels in tqdm(data_loader, desc="features", leave=False):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            features.append(encoder(images).float())
        labels.append(batch_labels.to(device))
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


def knn_top1(
    encoder,
    memory_loader,
    query_loader,
    device,
    num_classes,
    k=200,
    temperature=0.1,
    autocast_dtype=None,
    channels_last=False,
):
    """kNN top-1 in percent: training images (no augmentation) as memory, test images as queries."""
    memory_features, memory_labels = extract_features(
        encoder, memory_loader, device, autocast_dtype, channels_last
    )
    query_features, query_labels = extract_features(
        encoder, query_loader, device, autocast_dtype, channels_last
    )
    predictions = knn_predict(
        memory_features, memory_labels, query_features, num_classes, k, temperature
    )
    return 100.0 * (predictions == query_labels).float().mean().item()


def topk_correct(logits, labels, ks=(1, 5)):
    """Number of rows whose label is among the top-k logits, for each k (k capped at classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, :k].any(1).sum().item() for k in ks]
