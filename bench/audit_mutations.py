"""Put each bug that an audit of results' provenance, or a new user's first day, found back into a
copy of the committed code, one at a time, and run the tests that should catch it: every line
should say "caught". A bug the tests still pass ("SURVIVED") is a test missing. Not in CI: 15
minutes on two cores (BENCHMARKS.md, "What the tests catch").

    python bench/audit_mutations.py            # every bug
    python bench/audit_mutations.py lock seed  # those whose names start so

Each bug is one edit (a file, the text it replaces, the text put in) and the tests to run.
"""

import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (file, text in the code, text of the bug, tests)
BUGS = {
    # the audit's findings
    "older-probe-taken-as-done": (
        "sweep.py",
        "sweeps.status(job.point, job.measure)",
        "sweeps.status(job.point)",
        "tests/test_sweep.py::test_a_sweep_runs_its_points_skips_them_when_done_and_goes_on_past_a_failure",
    ),
    "checkpoint-filed-in-the-newest-run": (
        "simclr/checkpoints.py",
        "        return run_holding(checkpoint, run_dir), checkpoint\n",
        "        return rundir.resolve_run_dir(run_dir), checkpoint\n",
        "tests/test_identities.py::test_a_checkpoint_files_its_evaluation_with_its_own_run_never_the_newest",
    ),
    "resume-on-other-images": (
        "simclr/stage1_bookkeeping.py",
        "            resume.check_same_data(cfg, checkpoint, data)\n",
        "",
        "tests/test_resume.py::test_resume_refuses_other_images_and_follows_the_same_images_moved",
    ),
    "evaluation-name-any-path": (
        "config.py",
        """        shown="MODE-LABELS (e.g. finetune-10-per-class); linear on all labels: the run folder",
        numbers=False,
        folder_name=True,""",
        """        shown="MODE-LABELS (e.g. finetune-10-per-class); linear on all labels: the run folder",
        numbers=False,""",
        "tests/test_identities.py::test_an_evaluation_name_is_one_plain_folder_name_checked_before_anything_is_written",
    ),
    "no-lock": (
        "simclr/locks.py",
        "        if not lock(descriptor):",
        "        if False:",
        "tests/test_identities.py::test_a_second_stage_two_on_a_run_folder_is_refused_in_one_line_while_the_first_finishes",
    ),
    "plot-mixes-stage-one-weights": (
        "visualization.py",
        "        key = (result.kind, schedule, made_on(result, stage_one_weights))",
        '        key = (result.kind, schedule, "")',
        "tests/test_identities.py::test_evaluations_of_earlier_stage_one_weights_are_refused_marked_and_named",
    ),
    "test-py-serves-earlier-weights-silently": (
        "test.py",
        "    if run_dir:\n        say_if_stage_one_moved_on(checkpoint, run_dir)",
        "    if False:\n        say_if_stage_one_moved_on(checkpoint, run_dir)",
        "tests/test_identities.py::test_evaluations_of_earlier_stage_one_weights_are_refused_marked_and_named",
    ),
    "teacher-checked-by-config": (
        "simclr/distillation.py",
        '    return checkpoint.get("stage1_weights") == stage1.weights',
        '    return checkpoint.get("stage1_config") == stage1.settings',
        "tests/test_distill.py::test_a_missing_foreign_or_unfitting_teacher_is_refused_in_one_line",
    ),
    "queued-point-read-from-its-run": (
        "simclr/sweeps.py",
        '    if job is not None and "stage_one" in job and launchers.running_job(point):',
        "    if False:",
        "tests/test_sweep.py::test_a_queued_point_is_compared_by_what_its_job_record_saved",
    ),
    "batch-of-one-trains": (
        "simclr/loaders_workers.py",
        "    lone_last = len(labelled_split) % cfg.batch_size == 1\n",
        "    lone_last = False\n",
        "tests/test_few_labels.py::test_a_last_batch_of_one_image_is_dropped_where_batchnorm_trains",
    ),
    "damaged-json-traceback": (
        "simclr/rundir.py",
        "    except (UnicodeDecodeError, json.JSONDecodeError) as error:\n"
        '        raise damaged(path, f"not JSON: {error}", remake) from None',
        "    except OSError as error:\n        raise",
        "tests/test_bad_input.py::test_a_damaged_record_of_an_evaluation_is_named_in_one_line_and_replace_remakes_it "
        "tests/test_sweep.py::test_a_damaged_point_or_job_record_ends_the_sweep_in_one_line",
    ),
    "ignored-setting-accepted": (
        "simclr/flags.py",
        "    if read_where(cfg, field) or getattr(cfg, field.name) == field.default:",
        "    if True:",
        "tests/test_identities.py::test_a_setting_the_mode_would_ignore_is_refused_in_one_line",
    ),
    "paths-compared-as-typed": (
        "simclr/provenance.py",
        '    if field.metadata.get("path") and value:',
        "    if False:",
        "tests/test_sweep.py::test_a_sweep_runs_its_points_skips_them_when_done_and_goes_on_past_a_failure",
    ),
    "slurm-asked-for-0-gpus": (
        "simclr/launchers.py",
        '    if gpus:\n        parameters["gpus_per_node"] = gpus',
        '    parameters["gpus_per_node"] = gpus',
        "tests/test_sweep.py::test_a_slurm_sweep_on_cpus_asks_for_no_gpus",
    ),
    "device-not-checked": (
        "simclr/runtime.py",
        "    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0\n",
        "    return device\n",
        "tests/test_bad_input.py::test_a_device_this_machine_does_not_have_is_named_in_one_line",
    ),
    "run-name-not-checked": (
        "trainstage1.py",
        '        rundir.check_path_fits(cfg.run_dir, "--run-dir")  # before any work is done\n',
        "",
        "tests/test_bad_input.py::test_a_run_name_longer_than_the_file_system_allows_is_named_in_one_line",
    ),
    # the deliberate bugs that no test caught before
    "activation-checkpointing-flag-lost": (
        "trainstage1.py",
        "    model.recompute_activations = cfg.activation_checkpointing\n",
        "",
        "tests/test_activation_checkpointing.py::test_a_run_with_the_flag_is_the_run_without_it_and_the_flag_may_change_on_resume",
    ),
    "feature-norm-under-finetune-and-distill": (
        "trainstage2.py",
        "    norm = mode.frozen and cfg.feature_norm",
        "    norm = cfg.feature_norm",
        "tests/test_few_labels.py::test_a_last_batch_of_one_image_is_dropped_where_batchnorm_trains "
        "tests/test_distill.py::test_the_student_starts_from_stage_ones_weights",
    ),
    "feature-norm-batch-of-one": (
        "net.py",
        "                if len(h) == 1:  # a last batch of one image has no spread to add\n"
        "                    averaged = self.running_squared_norm\n",
        "",
        "tests/test_identities.py::test_a_training_batch_of_one_moves_the_feature_norms_mean_but_not_its_spread",
    ),
    "seed-not-in-an-evaluation": (
        "simclr/stage2_bookkeeping.py",
        '    settings = provenance.settings(cfg, precision=setup.encoding.in_effect["precision"])',
        '    settings = provenance.settings(cfg, precision=setup.encoding.in_effect["precision"])\n'
        '    settings.pop("seed")',
        "tests/test_identities.py::test_an_evaluation_is_keyed_by_its_seed_and_its_mode_not_by_replace_or_where_it_ran",
    ),
    "replace-in-an-evaluation": (
        "config.py",
        '        "replace an evaluation in that folder made otherwise (without it: this one is refused)",\n'
        "        numbers=False,",
        '        "replace an evaluation in that folder made otherwise (without it: this one is refused)",',
        "tests/test_identities.py::test_an_evaluation_is_keyed_by_its_seed_and_its_mode_not_by_replace_or_where_it_ran",
    ),
    "how-far-stage-one-trained-not-in-an-evaluation": (
        "simclr/checkpoints.py",
        '        inputs |= {"stage1_weights": stage1.weights, "stage1_trained": stage1.trained}',
        '        inputs |= {"stage1_weights": stage1.weights}',
        "tests/test_identities.py::test_evaluations_of_earlier_stage_one_weights_are_refused_marked_and_named",
    ),
    "precision-asked-not-in-effect": (
        "simclr/stage2_bookkeeping.py",
        '    settings = provenance.settings(cfg, precision=setup.encoding.in_effect["precision"])',
        "    settings = provenance.settings(cfg)",
        "tests/test_identities.py::test_the_precision_in_effect_keys_an_evaluation_not_the_one_asked_for",
    ),
    "seed-not-in-a-point": (
        "sweep.py",
        "    settings = provenance.settings(pretrain)\n",
        '    settings = provenance.settings(pretrain)\n    settings.pop("seed")\n',
        "tests/test_sweep.py::test_a_point_made_otherwise_stops_the_sweep_before_anything_runs",
    ),
    "point-measured-without-replace": (
        "simclr/sweeps.py",
        '            trainstage2 = [os.path.join(launchers.ROOT, "trainstage2.py"), *common, "--replace"]',
        '            trainstage2 = [os.path.join(launchers.ROOT, "trainstage2.py"), *common]',
        "tests/test_sweep.py::test_a_sweep_runs_its_points_skips_them_when_done_and_goes_on_past_a_failure",
    ),
    "point-record-of-before-identities-done": (
        "simclr/sweeps.py",
        "    if not stage_one or made != asked:",
        "    if stage_one and made != asked:",
        "tests/test_sweep.py::test_a_point_record_of_before_points_recorded_their_settings_is_not_taken_as_done",
    ),
    "zombie-job-running": (
        "simclr/launchers.py",
        'not in ("Z", "X")',
        'not in ("X",)',
        "tests/test_sweep.py::test_a_zombie_is_not_a_running_job",
    ),
    "newest-run-by-name": (
        "simclr/rundir.py",
        "    return max(finished)[1]",
        "    return max(path for _, path in finished)",
        "tests/test_checkpoints.py::test_the_newest_run_is_the_one_whose_config_json_was_written_last_not_the_last_by_name",
    ),
    "killed-runs-staging-files-moved-in": (
        "simclr/rundir.py",
        "        if os.path.isdir(self.dir) and not os.path.islink(self.dir):\n"
        "            shutil.rmtree(self.dir)\n"
        "        elif os.path.lexists(self.dir):\n"
        "            os.remove(self.dir)\n"
        "        os.makedirs(self.dir)",
        "        os.makedirs(self.dir, exist_ok=True)",
        "tests/test_identities.py::test_a_killed_evaluations_staging_files_are_never_moved_in",
    ),
    # a new user's first day: own photos, comparisons with their noise, runs that stay put
    "newest-run-still-training": (
        "simclr/rundir.py",
        "                if os.path.isfile(os.path.join(entry.path, STAGE_ONE_FILE)) and (\n"
        "                    stage_one_finished(entry.path)\n"
        "                ):",
        "                if os.path.isfile(os.path.join(entry.path, STAGE_ONE_FILE)):",
        "tests/test_first_hour.py::test_every_later_script_picks_the_same_newest_run_and_names_it",
    ),
    "abbreviated-flag-taken": (
        "simclr/flags.py",
        "allow_abbrev=False,",
        "allow_abbrev=True,",
        "tests/test_config.py::test_no_script_takes_an_abbreviated_flag",
    ),
    "choosing-figure-on-the-test-split": (
        "simclr/protocols.py",
        '("validation", data.validation_loader),',
        '("validation", data.test_loader),',
        "tests/test_few_labels.py::test_the_figure_to_choose_by_is_measured_on_held_out_training_images_never_the_test_split",
    ),
    "held-out-images-trained-on": (
        "loaddataset.py",
        "cfg.labels_per_class, cfg.label_fraction, seed, held_out",
        "cfg.labels_per_class, cfg.label_fraction, seed",
        "tests/test_few_labels.py::test_the_figure_to_choose_by_is_measured_on_held_out_training_images_never_the_test_split",
    ),
    "a-points-seeds-draw-other-data": (
        "simclr/sweeps.py",
        'chosen |= {"seed": str(seed), "data_seed": str(data_seed)}',
        'chosen |= {"seed": str(seed)}',
        "tests/test_sweep.py::test_a_sweep_at_three_seeds_reports_the_mean_and_standard_error_of_each_points_seeds",
    ),
    "spread-for-standard-error": (
        "simclr/sweeps.py",
        "statistics.stdev(values) / math.sqrt(len(values))",
        "statistics.stdev(values)",
        "tests/test_sweep.py::test_a_sweep_at_three_seeds_reports_the_mean_and_standard_error_of_each_points_seeds",
    ),
    "data-seed-ignored": (
        "simclr/datasets.py",
        '    found = settings.get("data_seed")\n',
        "    found = None\n",
        "tests/test_first_hour.py::test_later_scripts_use_stage_ones_subset_drawn_with_its_seed_unless_told_otherwise",
    ),
    "tiny-image-upscaled": (
        "simclr/datasets.py",
        "if min(image.size) < MIN_IMAGE_SIDE:",
        "if min(image.size) < 1:",
        "tests/test_folders.py::test_a_tiny_image_is_refused_in_one_line_never_upscaled",
    ),
    "photos-without-labels-refused": (
        "loaddataset.py",
        "labels_optional=True)",
        "labels_optional=False)",
        "tests/test_folders.py::test_stage_one_trains_on_a_folder_of_photos_without_labels_and_the_later_scripts_say_so",
    ),
    "a-photo-beside-itself": (
        "pictures.py",
        "    if own is not None:\n        similarity[",
        "    if own is None:\n        similarity[",
        "tests/test_folders.py::test_a_neighbour_grid_of_the_memorys_own_images_never_shows_an_image_beside_itself",
    ),
    # results anyone can check: the card, check.py, the receipts
    "weights-taken-by-name": (
        "simclr/cards.py",
        "    if found != recorded or (named and not recorded.startswith(named.group(1))):",
        "    if named and not recorded.startswith(named.group(1)):",
        "tests/test_card.py::test_check_agrees_with_the_card_and_refuses_a_changed_card_weights_or_dataset",
    ),
    "card-figure-taken-as-agreeing": (
        "check.py",
        '    agrees = abs(top1 - entry["top1"]) <= points',
        "    agrees = True",
        "tests/test_card.py::test_check_agrees_with_the_card_and_refuses_a_changed_card_weights_or_dataset",
    ),
    "receipt-figure-taken-as-agreeing": (
        "reproduce.py",
        '            agrees = abs(now - figure["value"]) <= points',
        "            agrees = True",
        "tests/test_receipts.py::test_reproduce_runs_a_receipt_again_and_compares_its_figures",
    ),
}


def copy_of_head():
    """The committed code in a temporary folder (git archive HEAD)."""
    folder = tempfile.mkdtemp(prefix="simclr-audit-")
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", "HEAD"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
    return folder


def run_tests(folder, tests):
    """pytest on tests in folder -> (whether every test passed, the first line naming a failure)."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider", *tests],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
        check=False,
    )
    failed = [line for line in run.stdout.splitlines() if line.startswith("FAILED")]
    return run.returncode == 0, (failed or run.stdout.splitlines()[-1:] or [""])[0]


def caught(folder, bug):
    """Put the bug in, run its tests, take it out -> (whether a test failed, its FAILED line)."""
    name, (path, text, buggy, tests) = bug
    path = os.path.join(folder, path)
    with open(path) as file:
        code = file.read()
    if code.count(text) != 1:
        raise SystemExit(f"{name}: the text to change is not once in {path}: update BUGS")
    with open(path, "w") as file:
        file.write(code.replace(text, buggy))
    try:
        passed, failure = run_tests(folder, tests.split())
    finally:
        with open(path, "w") as file:
            file.write(code)
    return not passed, failure


def main(names):
    folder = copy_of_head()
    chosen = [bug for bug in BUGS.items() if not names or bug[0].startswith(tuple(names))]
    tests = sorted({test for _, (_, _, _, named) in chosen for test in named.split()})
    passed, failure = run_tests(folder, tests)
    if not passed:  # a test that fails without any bug would make every bug look caught
        raise SystemExit(f"the tests fail without a bug put in: {failure}")
    survivors = []
    for bug in chosen:
        found, failure = caught(folder, bug)
        survivors += [] if found else [bug[0]]
        print(f"{bug[0]}: {'caught' if found else 'SURVIVED'} {failure[:150]}", flush=True)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
