"""SimCLRv2's few-label ways: the deeper head, fine-tuning from its middle (--from-head-layer) and
distillation on every image stage one saw (--mode distill)."""

import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import net
from simclr import checkpoints, datasets, distillation, rundir
from conftest import CLASSES, assert_documented, draw, load_script, run_main, results_of
from conftest import write_image_folder

FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
SUBSET = 16  # of the 24 training images: what stage one saw, and so what a student sees
UNLABELLED = 8  # with the subset, 24: three whole batches of 8
TEACHER = "finetune-2-per-class-head-layer-1"


@pytest.fixture(scope="module")
def taught_run(tmp_path_factory):
    """A one-epoch stage one with SimCLRv2's 3-layer head on a subset of a folder with unlabeled/
    images, and a teacher fine-tuned from the head's first layer on 2 labels per class."""
    root = tmp_path_factory.mktemp("taught")
    images = write_image_folder(root / "images")
    (images / "unlabeled").mkdir()
    rng = np.random.default_rng(1)
    for number in range(UNLABELLED):
        draw(number % len(CLASSES), rng).save(images / "unlabeled" / f"{number}.png")
    run_dir = root / "run"
    argv = ["--dataset", "folder", "--data-dir", images, "--arch", "resnet18", "--batch-size", 8]
    argv += ["--epochs", 1, "--knn-every", 0, "--image-size", 16, "--proj-layers", 3]
    argv += ["--subset", SUBSET]
    load_script("trainstage1").main([str(arg) for arg in [*argv, *FAST, "--run-dir", run_dir]])
    teacher = ["--run-dir", run_dir, "--mode", "finetune", "--labels-per-class", 2]
    teacher += ["--from-head-layer", 1, "--epochs", 2, "--batch-size", 4, *FAST]
    load_script("trainstage2").main([str(arg) for arg in teacher])
    return run_dir


def copied(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def distill(run_dir, capsys, *extra):
    argv = ["--run-dir", run_dir, "--mode", "distill", "--teacher", TEACHER, "--epochs", 2]
    return run_main("trainstage2", [*argv, "--batch-size", 8, *FAST, *extra], capsys)


def evaluation(run_dir, name):
    folder = os.path.join(run_dir, rundir.EVALUATIONS, name)
    results = results_of(folder)
    stage2 = checkpoints.load(os.path.join(folder, checkpoints.STAGE_TWO_FILE), stage=2)
    return results, stage2["model"]


def test_the_distillation_loss_is_the_soft_cross_entropy_written_out():
    """-sum_y P_T(y; tau) log P_S(y; tau), mean over the batch, against a double loop by hand:
    the value and the student's gradient, at tau != 1; the teacher receives no gradient."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    tau = 2.5
    expected = 0.0
    for row in range(5):
        teacher_sum = sum(torch.exp(teacher[row, k] / tau) for k in range(4))
        student_sum = sum(torch.exp(student[row, k] / tau) for k in range(4))
        for y in range(4):
            p_teacher = torch.exp(teacher[row, y] / tau) / teacher_sum
            expected = expected - p_teacher.detach() * torch.log(
                torch.exp(student[row, y] / tau) / student_sum
            )
    expected = expected / 5
    found = distillation.distillation_loss(student, teacher, tau)
    assert torch.allclose(found.double(), expected, atol=1e-6)
    (expected_grad,) = torch.autograd.grad(expected, student)
    (found_grad,) = torch.autograd.grad(found, student)
    assert torch.allclose(found_grad.double(), expected_grad, atol=1e-6)
    # the gradient by hand: (P_S - P_T) / (tau * batch)
    by_hand = (torch.softmax(student / tau, 1) - torch.softmax(teacher / tau, 1)) / (tau * 5)
    assert torch.allclose(found_grad.double(), by_hand.detach(), atol=1e-6)
    assert not distillation.distillation_loss(student, teacher, tau).grad_fn is None
    loss = distillation.distillation_loss(student, teacher, tau)
    assert torch.autograd.grad(loss, teacher, allow_unused=True)[0] is None


def test_the_student_learns_on_every_image_and_leaves_the_teacher_as_it_was(
    taught_run, tmp_path, capsys, monkeypatch
):
    """The student sees the training split and the unlabelled images each epoch; the teacher's
    weights and BatchNorm statistics, in memory, equal its stage2.pth after the run."""
    run_dir = copied(taught_run, tmp_path)
    teacher_path = os.path.join(run_dir, rundir.EVALUATIONS, TEACHER, checkpoints.STAGE_TWO_FILE)
    on_disk = checkpoints.load(teacher_path, stage=2)["model"]
    built, read = [], []
    rebuild = net.from_stage_two
    monkeypatch.setattr(net, "from_stage_two", lambda *a: built.append(rebuild(*a)) or built[-1])
    unlabelled_read = datasets.UnlabelledImages.__getitem__
    monkeypatch.setattr(
        datasets.UnlabelledImages,
        "__getitem__",
        lambda self, index: read.append(index) or unlabelled_read(self, index),
    )
    code, out, _ = distill(run_dir, capsys)
    assert code == 0, out
    (teacher,) = built
    assert all(torch.equal(teacher.state_dict()[key], value) for key, value in on_disk.items())
    assert sorted(read) == sorted(list(range(UNLABELLED)) * 2)  # each, once an epoch, 2 epochs
    results, student = evaluation(run_dir, "distill-2-per-class-head-layer-1")
    images = SUBSET + UNLABELLED  # stage one's subset, not the whole training split
    assert (results["student_images"], results["images_seen"]) == (images, 2 * images)
    assert (results["teacher"], results["mode"], results["from_head_layer"]) == (
        TEACHER,
        "distill",
        1,
    )
    assert results["distill_temperature"] == 1.0 and results["label_weight"] == 0.0
    assert "head.0.weight" in student and "encoder.conv1.weight" in student


class SwappedLabels(torch.utils.data.Dataset):
    """A split whose every image comes with another class's label; its targets (what draws the
    labelled images) stay, so the same images are labelled."""

    def __init__(self, split):
        self.split, self.targets = split, split.targets
        self.samples, self.classes = split.samples, split.classes

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index):
        image, label = self.split[index]
        return image, (label + 1) % len(CLASSES)


@pytest.mark.long
def test_without_label_weight_the_student_reads_no_label(taught_run, tmp_path, capsys, monkeypatch):
    """Every label of the training split swapped: the same student at --label-weight 0 (the
    loss reads the teacher alone), another one at --label-weight 1 (which reads the labels)."""
    students = {}
    for swapped in (False, True):
        for weight in ("0", "1"):
            run_dir = copied(taught_run, tmp_path / f"{swapped}-{weight}")
            with monkeypatch.context() as patch:
                if swapped:
                    full_split = datasets.DataSource.full_split.__wrapped__
                    patch.setattr(
                        datasets.DataSource,
                        "full_split",
                        lambda self, train: (
                            SwappedLabels(full_split(self, train))
                            if train
                            else full_split(self, train)
                        ),
                    )
                code, out, _ = distill(run_dir, capsys, "--label-weight", weight, "--epochs", 1)
            assert code == 0, out
            students[swapped, weight] = evaluation(run_dir, "distill-2-per-class-head-layer-1")[1]
    same = [
        torch.equal(students[False, "0"][k], students[True, "0"][k]) for k in students[False, "0"]
    ]
    assert all(same)
    moved = [
        torch.equal(students[False, "1"][k], students[True, "1"][k]) for k in students[False, "1"]
    ]
    assert not all(moved)


def test_from_head_layer_one_fine_tunes_the_heads_first_layer_and_zero_leaves_the_head_out(
    taught_run, tmp_path, capsys
):
    run_dir = copied(taught_run, tmp_path)
    stage1 = checkpoints.load(os.path.join(run_dir, checkpoints.STAGE_ONE_FILE), stage=1)["model"]
    _, finetuned = evaluation(run_dir, TEACHER)
    assert {key for key in finetuned if key.startswith("head.")} == {
        "head.0.weight",
        "head.1.weight",
        "head.1.bias",
        "head.1.running_mean",
        "head.1.running_var",
        "head.1.num_batches_tracked",
    }
    assert finetuned["classifier.weight"].shape == (len(CLASSES), 512)
    assert not torch.equal(finetuned["head.0.weight"], stage1["projector.0.weight"])  # trained
    built = net.classifier_on_stage_one(
        checkpoints.read_stage_one(os.path.join(run_dir, checkpoints.STAGE_ONE_FILE), run_dir),
        len(CLASSES),
        1,
        pretrained=True,
        frozen=False,
        norm=False,
    )
    assert torch.equal(built.head[0].weight, stage1["projector.0.weight"])  # starts from stage one
    # the first layer whole: the classifier reads it after its BatchNorm and ReLU
    assert [type(layer) for layer in built.head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    argv = ["--run-dir", run_dir, "--labels-per-class", 2, "--epochs", 1, "--batch-size", 4, *FAST]
    for mode in ("finetune", "linear"):
        assert run_main("trainstage2", [*argv, "--mode", mode], capsys)[0] == 0
    _, from_h = evaluation(run_dir, "finetune-2-per-class")
    assert not any(key.startswith("head.") for key in from_h)
    # linear from head layer 1: the head layer frozen, its BatchNorm statistics included, also
    # where it runs at every step
    linear = [*argv, "--mode", "linear", "--from-head-layer", 1, "--protocol", "per-step"]
    assert run_main("trainstage2", linear, capsys)[0] == 0
    _, linear = evaluation(run_dir, "linear-2-per-class-head-layer-1")
    for key in ("head.0.weight", "head.1.running_mean", "head.1.running_var"):
        assert torch.equal(linear[key], stage1["projector." + key[len("head.") :]])


def test_a_two_layer_checkpoint_of_before_the_flag_loads_and_fine_tunes_from_its_first_layer(
    stage_one_run, tmp_path, capsys
):
    """A stage-one checkpoint whose settings predate --proj-layers (and a stage2.pth that predates
    --from-head-layer) rebuilds the paper's 2-layer head."""
    run_dir = copied(stage_one_run, tmp_path)
    path = os.path.join(run_dir, checkpoints.STAGE_ONE_FILE)
    old = checkpoints.load(path, stage=1)
    del old["config"]["proj_layers"]
    checkpoints.save(path, old)
    model = net.from_stage_one(checkpoints.load(path, stage=1), path)
    assert len(model.projector) == 4
    argv = ["--run-dir", run_dir, "--mode", "finetune", "--labels-per-class", 2, "--epochs", 1]
    assert (
        run_main("trainstage2", [*argv, "--batch-size", 4, "--from-head-layer", 1, *FAST], capsys)[
            0
        ]
        == 0
    )
    assert run_main("trainstage2", [*argv, "--batch-size", 4, *FAST], capsys)[0] == 0
    stage2_path = os.path.join(run_dir, rundir.EVALUATIONS, "finetune-2-per-class", "stage2.pth")
    stage2 = checkpoints.load(stage2_path, stage=2)
    for key in ("from_head_layer", "stage1_config"):
        del stage2[key]
    assert len(net.from_stage_two(stage2, stage2_path).head) == 0  # the classifier on h


def bad_distill(run_dir, capsys, *flags):
    argv = ["--run-dir", run_dir, "--epochs", 1, "--batch-size", 8, *FAST, *flags]
    code, _, lines = run_main("trainstage2", argv, capsys)
    assert code != 0 and len(lines) == 1, lines
    if lines[0].startswith("error: "):  # not argparse's own, which names the script
        assert_documented(lines[0])
    return lines[0]


def test_a_missing_foreign_or_unfitting_teacher_is_refused_in_one_line(
    taught_run, tmp_path, capsys
):
    run_dir = copied(taught_run, tmp_path)
    evaluations = os.path.join(run_dir, rundir.EVALUATIONS)
    assert "needs --teacher EVALUATION" in bad_distill(run_dir, capsys, "--mode", "distill")
    assert "has no evaluation finetune-9" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", "finetune-9"
    )
    os.makedirs(os.path.join(evaluations, "stopped"))
    assert "has no stage2.pth" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", "stopped"
    )
    shutil.copy(
        os.path.join(run_dir, checkpoints.STAGE_ONE_FILE),
        os.path.join(evaluations, "stopped", checkpoints.STAGE_TWO_FILE),
    )
    assert "is a stage-1 checkpoint" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", "stopped"
    )
    teacher_path = os.path.join(evaluations, TEACHER, checkpoints.STAGE_TWO_FILE)
    teacher = checkpoints.load(teacher_path, stage=2)
    other_run = {**teacher, "stage1_weights": "0" * 16}
    os.makedirs(os.path.join(evaluations, "other-run"))
    checkpoints.save(os.path.join(evaluations, "other-run", checkpoints.STAGE_TWO_FILE), other_run)
    assert "was not made on this run's stage-one weights" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", "other-run"
    )
    two_classes = {**teacher, "class_names": list(CLASSES[:2])}
    os.makedirs(os.path.join(evaluations, "two-classes"))
    checkpoints.save(
        os.path.join(evaluations, "two-classes", checkpoints.STAGE_TWO_FILE), two_classes
    )
    assert "classifies 2 classes and this dataset has 3" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", "two-classes"
    )
    assert "more than the 3 layers of this run's projection head" in bad_distill(
        run_dir, capsys, "--mode", "finetune", "--labels-per-class", 2, "--from-head-layer", 4
    )
    assert "more than the 3 layers of this run's projection head" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", TEACHER, "--from-head-layer", 4
    )
    assert "is read with --mode distill only" in bad_distill(run_dir, capsys, "--teacher", TEACHER)
    assert "uses the teacher's labels" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", TEACHER, "--labels-per-class", 3
    )
    assert "leave out --from-head-layer" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", TEACHER, "--student-arch", "resnet18",
        "--from-head-layer", 1,
    )  # fmt: skip
    assert "not the teacher's" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", TEACHER, "--seed", 5
    )
    assert sorted(os.listdir(evaluations)) == sorted(
        ["other-run", "stopped", TEACHER, "two-classes"]
    )
    # stage one trained on since the teacher was made (its settings the same): no teacher now
    path = os.path.join(run_dir, checkpoints.STAGE_ONE_FILE)
    stage1 = checkpoints.load(path, stage=1)
    stage1["model"]["encoder.conv1.weight"] += 0.01
    checkpoints.save(path, stage1 | {"epoch": 2, "config": {**stage1["config"], "epochs": 2}})
    assert "was not made on this run's stage-one weights" in bad_distill(
        run_dir, capsys, "--mode", "distill", "--teacher", TEACHER
    )


def test_the_teacher_predicts_the_very_view_the_student_learns_from(
    taught_run, tmp_path, capsys, monkeypatch
):
    """SimCLRv2's student matches the teacher's prediction of the same crop + flip view: the
    teacher's input is the student's, tensor for tensor, at every step."""
    run_dir = copied(taught_run, tmp_path)
    seen = {"teacher": [], "student": []}
    trainstage2 = load_script("trainstage2")

    def recorded(name, module):
        module.register_forward_pre_hook(lambda _, inputs: seen[name].append(inputs[0].clone()))
        return module

    rebuild, build = net.from_stage_two, trainstage2.build_model
    monkeypatch.setattr(net, "from_stage_two", lambda *a: recorded("teacher", rebuild(*a)))
    monkeypatch.setattr(trainstage2, "build_model", lambda *a: recorded("student", build(*a)))
    argv = ["--run-dir", run_dir, "--mode", "distill", "--teacher", TEACHER, "--epochs", 1]
    trainstage2.main([str(arg) for arg in [*argv, "--batch-size", 8, *FAST]])
    # the student also runs on the test split after the epoch; the steps come first
    steps = len(seen["teacher"])
    assert steps == (SUBSET + UNLABELLED) // 8
    for teacher_view, student_view in zip(seen["teacher"], seen["student"][:steps]):
        assert torch.equal(teacher_view, student_view)


def test_the_student_starts_from_stage_ones_weights(taught_run, tmp_path, capsys):
    """Self-distillation starts the student from stage one's encoder and head layer: at an lr
    too small to move them, its weights are stage one's (its BatchNorm statistics do move)."""
    run_dir = copied(taught_run, tmp_path)
    stage1 = checkpoints.load(os.path.join(run_dir, checkpoints.STAGE_ONE_FILE), stage=1)["model"]
    code, out, _ = distill(run_dir, capsys, "--lr", 1e-9, "--epochs", 1)
    assert code == 0, out
    _, student = evaluation(run_dir, "distill-2-per-class-head-layer-1")
    assert not any(key.startswith("feature_norm.") for key in student)  # a linear probe's alone
    weights = [key for key in student if key.startswith("encoder.") and student[key].ndim > 1]
    assert len(weights) > 10
    for key in weights + ["head.0.weight"]:
        stage_one_key = key.replace("head.", "projector.")
        assert torch.allclose(student[key], stage1[stage_one_key], atol=1e-6), key


def test_a_student_of_another_arch_is_read_by_test_py_the_confusion_matrix_and_as_a_teacher(
    taught_run, tmp_path, capsys
):
    run_dir = copied(taught_run, tmp_path)
    code, out, _ = distill(run_dir, capsys, "--student-arch", "resnet34", "--epochs", 1)
    assert code == 0, out
    name = "distill-2-per-class"
    path = os.path.join(run_dir, rundir.EVALUATIONS, name, checkpoints.STAGE_TWO_FILE)
    student = checkpoints.load(path, stage=2)
    assert (student["arch"], student["feature_dim"], student["stem"]) == ("resnet34", 512, "cifar")
    assert "encoder.layer1.2.conv1.weight" in student["model"]  # ResNet-34's third block
    pointed = ["--run-dir", run_dir, "--evaluation", name]
    image = next((taught_run.parent / "images" / "test" / CLASSES[0]).iterdir())
    code, out, errors = run_main("test", [*pointed, image], capsys)
    assert code == 0 and out.startswith(f"{image}: ") and not errors
    code, out, _ = run_main("confusionMatrix", pointed, capsys)
    assert code == 0 and "confusion_matrix.png" in out
    argv = ["--run-dir", run_dir, "--mode", "distill", "--teacher", name, "--epochs", 1]
    argv += ["--evaluation", "taught-by-the-resnet34", "--batch-size", 8, *FAST]
    code, out, _ = run_main("trainstage2", argv, capsys)
    assert code == 0, out
    results, _ = evaluation(run_dir, "taught-by-the-resnet34")
    assert results["teacher"] == name and results["teacher_weights"]


def test_a_teacher_replaced_after_its_student_is_noticed(taught_run, tmp_path, capsys):
    """The student's results name its teacher's weights: a teacher replaced since is named as
    such, and the same distillation command is refused (its teacher is another one now)."""
    run_dir = copied(taught_run, tmp_path)
    assert distill(run_dir, capsys)[0] == 0
    results = rundir.Results.read(run_dir / rundir.EVALUATIONS / "distill-2-per-class-head-layer-1")
    assert checkpoints.teacher_note(run_dir, results) == ""
    teacher = ["--run-dir", run_dir, "--mode", "finetune", "--labels-per-class", 2]
    teacher += ["--from-head-layer", 1, "--epochs", 2, "--batch-size", 4, "--lr", 0.1]
    assert run_main("trainstage2", [*teacher, "--replace", *FAST], capsys)[0] == 0
    assert checkpoints.teacher_note(run_dir, results) == " (since replaced)"
    code, _, errors = distill(run_dir, capsys)
    assert code == 2 and "holds an evaluation made with the teacher's weights" in errors[0]
