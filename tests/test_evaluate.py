"""The weighted kNN monitor and top-k counting."""

import pytest
import torch

from simclr import evaluate
from simclr import runtime


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


def test_knn_takes_only_the_k_nearest_and_splits_queries_into_chunks(monkeypatch):
    """k = 3 of 8: the nearest neighbour is class 0 but the next two are class 1, and the five
    farthest are class 0 again. Votes nearly equal (T = 100): only the 3 nearest give class 1;
    all 8, or the 3 farthest, give class 0."""
    angles = torch.tensor([0.0, 0.1, 0.12, 1.0, 1.1, 1.2, 1.3, 1.4])
    memory = torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.tensor([0, 1, 1, 0, 0, 0, 0, 0])
    queries = torch.tensor([[1.0, 0.0]] * 5)
    assert evaluate.knn_predict(memory, labels, queries, 2, 3, 100.0).tolist() == [1] * 5
    assert evaluate.knn_predict(memory, labels, queries, 2, 8, 100.0).tolist() == [0] * 5
    monkeypatch.setattr(evaluate, "KNN_QUERY_CHUNK", 2)  # chunks of 2, 2 and 1 queries
    mixed = torch.cat([queries[:3], -queries[:2]])  # the last two nearest the class-0 far side
    chunked = evaluate.knn_predict(memory, labels, mixed, 2, 3, 100.0)
    monkeypatch.setattr(evaluate, "KNN_QUERY_CHUNK", 1024)
    assert chunked.tolist() == evaluate.knn_predict(memory, labels, mixed, 2, 3, 100.0).tolist()
    assert chunked.tolist() == [1, 1, 1, 0, 0]


def test_feature_extraction_runs_a_training_encoder_in_eval_mode_and_gives_its_mode_back():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(1)
    ).train()
    encoder[1].running_mean.fill_(0.5)  # statistics unlike the batch's: train mode would show
    images = torch.randn(6, 3, 5, 5)
    loader = [(images[:3], torch.tensor([0, 1, 0])), (images[3:], torch.tensor([1, 1, 0]))]
    statistics = {name: t.clone() for name, t in encoder.state_dict().items()}
    features, labels = evaluate.extract_features(
        encoder, loader, runtime.Encoding(torch.device("cpu"))
    )
    assert encoder.training  # given back
    assert all(torch.equal(statistics[name], t) for name, t in encoder.state_dict().items())
    with torch.no_grad():
        expected = encoder.eval()(images)
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)
    assert labels.tolist() == [0, 1, 0, 1, 1, 0]


def test_topk_correct_counts_hits_and_caps_k_at_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert evaluate.topk_correct(logits, labels, (1, 2, 5)) == [1, 2, 3]
    # 7 classes: a label ranked 6th is outside the top 5, one ranked 5th inside
    ranked = torch.tensor([[7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]] * 2)
    assert evaluate.topk_correct(ranked, torch.tensor([5, 4]), (1, 5)) == [0, 1]


def test_knn_top1_encodes_memory_and_queries_with_the_encoding_and_scores_them():
    """A linear 'encoder' on 1x1 images: class c's images point along axis c. Memory norms
    differ wildly, so only cosine similarity (features normalised per row) finds the right class;
    the encoder is handed channels_last inputs and runs under the float16 autocast asked for."""
    seen = []

    class Encoder(torch.nn.Module):
        def forward(self, images):
            seen.append((images.is_contiguous(memory_format=torch.channels_last), images.dtype))
            seen.append(
                torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            )
            return images.flatten(1)

    memory = torch.tensor([[1.0, 0.1, 0.0], [0.1, 0.0, 0.0], [0.0, 0.5, 0.1], [0.0, 30.0, 4.0]])
    memory_labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.1], [0.05, 1.0, 0.0]])
    query_labels = torch.tensor([0, 1, 0])  # the third is wrong by design: 2 of 3 right
    loader = lambda features, labels: [(features[:, :, None, None], labels)]  # noqa: E731
    encoding = runtime.Encoding(torch.device("cpu"), torch.float16, channels_last=True)
    top1 = evaluate.knn_top1(
        Encoder(), loader(memory, memory_labels), loader(queries, query_labels), encoding, 1, 0.1
    )
    assert top1 == pytest.approx(200 / 3)
    assert seen[0] == (True, torch.float32) and seen[1] == torch.float16


def test_each_query_is_normalised_on_its_own():
    """One class-0 neighbour at cosine 0.99 against two class-1 ones at 0.9: at T = 0.1 class 0
    wins (e^9.9 > 2 e^9). Three unit queries scaled together by 1/sqrt(3) would let class 1 win."""
    angles = torch.tensor([0.1415, 0.4510, -0.4510])
    memory = torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.tensor([0, 1, 1])
    queries = torch.tensor([[1.0, 0.0]] * 3)
    assert evaluate.knn_predict(memory, labels, queries, 2, 3, 0.1).tolist() == [0, 0, 0]


def test_knn_top1_gives_up_when_a_stop_arrives_during_either_pass():
    class StopAfter:
        """A runtime.StopSignal stand-in whose signal arrives after `batches` batches."""

        def __init__(self, batches):
            self.batches = batches

        @property
        def received(self):
            self.batches -= 1
            return self.batches < 0

    encoder = torch.nn.Flatten(1)
    loader = [(torch.randn(2, 3, 1, 1), torch.tensor([0, 1]))] * 2
    cpu = runtime.Encoding(torch.device("cpu"))
    assert evaluate.knn_top1(encoder, loader, loader, cpu, 1, 0.1, StopAfter(1)) is None
    assert evaluate.knn_top1(encoder, loader, loader, cpu, 1, 0.1, StopAfter(3)) is None
    assert evaluate.knn_top1(encoder, loader, loader, cpu, 1, 0.1, StopAfter(4)) == 100.0
