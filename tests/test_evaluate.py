"""The weighted kNN monitor, top-k counting and the chance-level warning."""

import math
import warnings

import pytest
import torch

import evaluate
from conftest import load_script


def test_knn_predicts_the_class_of_the_nearest_cluster():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 5
    memory_labels = torch.arange(3).repeat_interleave(20)
    memory = centres[memory_labels] + torch.randn(60, 16, generator=generator)
    query_labels = torch.tensor([2, 0, 1, 1])
    queries = centres[query_labels] + 0.5 * torch.randn(4, 16, generator=generator)
    predictions = evaluate.knn_predict(memory, memory_labels, queries, 3, k=200, temperature=0.1)
    assert predictions.tolist() == query_labels.tolist()


def test_knn_votes_are_weighted_by_similarity():
    memory = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1])
    # one very close neighbour of class 0 outweighs two farther ones of class 1 at T = 0.1
    assert evaluate.knn_predict(memory, labels, torch.tensor([[1.0, 0.05]]), 2, 3, 0.1).item() == 0
    # with a high temperature the votes become almost equal and the majority wins
    assert (
        evaluate.knn_predict(memory, labels, torch.tensor([[1.0, 0.05]]), 2, 3, 100.0).item() == 1
    )


def test_topk_correct_counts_hits_and_caps_k_at_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert evaluate.topk_correct(logits, labels, (1, 2, 5)) == [1, 2, 3]


def test_warning_when_the_first_epoch_loss_sits_at_chance():
    trainstage1 = load_script("trainstage1")
    with pytest.warns(UserWarning, match="chance level"):
        trainstage1.warn_if_at_chance(math.log(2 * 256 - 1) * 0.995, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # well below chance: no warning may be raised
        trainstage1.warn_if_at_chance(math.log(2 * 256 - 1) * 0.9, 256)
