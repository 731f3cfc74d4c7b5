"""The run's configuration (``sparse_bnn.experiment.config``) and the ``sparse-bnn fit`` options generated from it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sparse_bnn.cli import build_parser, config_from_args, main
from sparse_bnn.experiment.config import RunConfig, ShrinkConfig, TrainingConfig, options
from sparse_bnn.experiment.run import RunDirectoryError, _check_resumable
from sparse_bnn.experiment.evaluate import read_run

# What a user sees today when leaving an option out; a changed default must change this table too.
USER_VISIBLE_DEFAULTS = {
    "data": "fashion-mnist", "data_dir": None, "download": True, "validation_fraction": 0.0, "n_train": None,
    "n_test": None, "augment": None,
    "net": "mlp", "widths": (400, 400), "net_size": None, "activation": "silu", "prior": "ss-ghs", "prior_options": {},
    "sigma0": None, "inclusion": None, "temperature": 0.5, "rho_init": -6.0, "weight_noise": "hash",
    "soft": False, "centred": False, "kl_weight": 1.0,
    "epochs": 10, "batch_size": 1024, "lr": 1e-3, "indicator_lr": None, "lr_schedule": "constant",
    "lr_final_fraction": 0.1, "seed": 0, "fine_tune_epochs": 0, "devices": None, "checkpoint_interval": 10.0,
    "shrink": False, "shrink_warmup": 10, "shrink_patience": 3, "shrink_threshold": None, "shrink_factor": 0.25,
    "bmr": "none", "bmr_warmup": None,
    "threshold": 0.5, "samples": 10, "latency": True,
}

# One non-default use of every flag: (command-line words, flat name, the value it sets)
EVERY_FLAG = [
    (["--data", "digits"], "data", "digits"),
    (["--data-dir", "."], "data_dir", "."),
    (["--no-download"], "download", False),
    (["--validation-fraction", "0.2"], "validation_fraction", 0.2),
    (["--n-train", "100"], "n_train", 100),
    (["--n-test", "50"], "n_test", 50),
    (["--augment"], "augment", True),
    (["--no-augment"], "augment", False),
    (["--net", "lenet5"], "net", "lenet5"),
    (["--widths", "3,4"], "widths", (3, 4)),
    (["--net-size", "small"], "net_size", "small"),
    (["--activation", "tanh"], "activation", "tanh"),
    (["--prior", "ss-gl"], "prior", "ss-gl"),
    (["--prior-option", "slab_width=2", "--prior-option", "random_slab=yes"], "prior_options",
     {"slab_width": 2.0, "random_slab": True}),
    (["--sigma0", "0.3"], "sigma0", 0.3),
    (["--inclusion", "0.01"], "inclusion", 0.01),
    (["--temperature", "0.7"], "temperature", 0.7),
    (["--rho-init", "-3"], "rho_init", -3.0),
    (["--weight-noise", "threefry"], "weight_noise", "threefry"),
    (["--soft"], "soft", True),
    (["--centred"], "centred", True),
    (["--kl-weight", "0.3"], "kl_weight", 0.3),
    (["--epochs", "3"], "epochs", 3),
    (["--batch-size", "64"], "batch_size", 64),
    (["--lr", "0.01"], "lr", 0.01),
    (["--indicator-lr", "0.1"], "indicator_lr", 0.1),
    (["--lr-schedule", "cosine"], "lr_schedule", "cosine"),
    (["--lr-final-fraction", "0.2"], "lr_final_fraction", 0.2),
    (["--seed", "7"], "seed", 7),
    (["--fine-tune-epochs", "2"], "fine_tune_epochs", 2),
    (["--devices", "1"], "devices", 1),
    (["--checkpoint-interval", "0"], "checkpoint_interval", 0.0),
    (["--shrink"], "shrink", True),
    (["--shrink-warmup", "2"], "shrink_warmup", 2),
    (["--shrink-patience", "4"], "shrink_patience", 4),
    (["--shrink-threshold", "0.1"], "shrink_threshold", 0.1),
    (["--shrink-factor", "0.5"], "shrink_factor", 0.5),
    (["--bmr", "nodewise"], "bmr", "nodewise"),
    (["--bmr-warmup", "3"], "bmr_warmup", 3),
    (["--threshold", "0.7"], "threshold", 0.7),
    (["--samples", "3"], "samples", 3),
    (["--no-latency"], "latency", False),
]


def parse(*words: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(["fit", *words]))


def test_the_command_line_defaults_are_the_fields_defaults_and_todays():
    config = parse("--out", "run")
    assert config == RunConfig(out="run") == RunConfig.flat(out="run")
    assert config.flat_dict() == {**USER_VISIBLE_DEFAULTS, "out": "run"}
    assert {entry.name for entry in options()} == {*USER_VISIBLE_DEFAULTS, "out"}
    # the defaults kept elsewhere are taken from there
    from sparse_bnn.train import CHECKPOINT_INTERVAL
    from sparse_bnn.sparsify.shrink import ShrinkSchedule
    assert ShrinkConfig().schedule() == ShrinkSchedule()
    assert TrainingConfig().checkpoint_interval == CHECKPOINT_INTERVAL


@pytest.mark.parametrize("words, name, value", EVERY_FLAG, ids=[" ".join(w) for w, _, _ in EVERY_FLAG])
def test_every_flag_sets_its_nested_field_and_nothing_else(words, name, value):
    config = parse(*words, "--out", "run")
    entry = next(e for e in options() if e.name == name)
    assert getattr(getattr(config, entry.section), entry.field.name) == value
    assert config.flat_dict() == {**USER_VISIBLE_DEFAULTS, "out": "run", name: value}


def test_every_flag_is_tried():
    tried = {word for words, _, _ in EVERY_FLAG for word in words if word.startswith("--")}
    assert {entry.flag for entry in options()} - {"--out"} <= tried


def test_help_is_the_fields_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for entry in options():
        assert entry.flag in text and " ".join(entry.help.split()[:4]) in text, entry.name
    assert f"(default: {ShrinkConfig().factor})" in text and "shrinking while training (--shrink):" in text


def test_a_prior_hyperparameter_from_the_command_line_reaches_the_prior():
    from sparse_bnn.experiment.run import build_model, net_config
    from sparse_bnn.experiment.evaluate import load_run_dataset
    config = parse("--data", "digits", "--n-train", "200", "--n-test", "100", "--widths", "8", "--prior", "ss-gl",
                   "--prior-option", "lam2_shape=3", "--prior-option", "shrink_output=false", "--out", "run").check()
    dataset = load_run_dataset(config)
    prior = build_model(config, dataset, net_config(config, dataset)).prior
    assert (prior.lam2_shape, prior.lam2_rate, prior.shrink_output) == (3.0, 2.0, False)
    config = config.replace(prior="ss-ghs", prior_options={"slab_width": 2.5}, sigma0=0.3).check()
    prior = build_model(config, dataset, net_config(config, dataset)).prior
    assert (prior.slab_width, prior.sigma_0) == (2.5, 0.3)


@pytest.mark.parametrize("prior, option, message", [
    ("flat", "lam2_shape=3", "--prior-option lam2_shape: the prior flat has no such hyperparameter; its options "
                             "are precision_shape, precision_rate, hidden_factor"),
    ("gaussian", "slab_width=2", "the prior gaussian has no such hyperparameter; it takes none"),
    ("ss-ghs", "sigma_0=2", "its slab scale is --sigma0"),
    ("ss-gl", "lam2_shape=-1", "lam2_shape must be positive"),
])
def test_a_bad_prior_option_is_refused_naming_it(tmp_path, capsys, prior, option, message):
    out = tmp_path / "run"
    assert main(["fit", "--data", "digits", "--prior", prior, "--prior-option", option, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_prior_option_of_the_wrong_type_is_refused():
    with pytest.raises(ValueError, match="--prior-option lam2_shape takes a number, got 'many'"):
        parse("--prior", "ss-gl", "--prior-option", "lam2_shape=many", "--out", "run")
    with pytest.raises(ValueError, match="--prior-option shrink_output takes true or false"):
        parse("--prior", "ss-gl", "--prior-option", "shrink_output=maybe", "--out", "run")
    with pytest.raises(SystemExit):
        parse("--prior-option", "lam2_shape", "--out", "run")


@pytest.mark.parametrize("words, needles", [
    (["--bmr", "elementwise", "--shrink"], ["--shrink", "--bmr nodewise"]),
    (["--bmr", "nodewise", "--shrink", "--shrink-patience", "5"], ["--shrink-patience", "--bmr nodewise"]),
    (["--shrink-factor", "0.5", "--shrink-warmup", "3"], ["--shrink-warmup, --shrink-factor", "give --shrink"]),
    (["--lr-final-fraction", "0.2"], ["--lr-final-fraction", "--lr-schedule"]),
    (["--bmr-warmup", "3"], ["--bmr-warmup", "give --bmr"]),
    (["--bmr", "nodewise", "--epochs", "5", "--bmr-warmup", "6"], ["--bmr-warmup", "the epochs (5)"]),
    (["--prior", "gaussian", "--shrink"], ["--shrink", "--prior gaussian", "--bmr nodewise"]),
    (["--prior", "flat", "--bmr", "nodewise", "--centred"], ["--bmr", "--centred"]),
])
def test_contradictory_options_fail_with_one_error_naming_both_before_anything_is_written(
        tmp_path, capsys, words, needles):
    out = tmp_path / "run"
    assert main(["fit", "--data", "digits", *words, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("error:") == 1 and all(needle in error for needle in needles), error
    assert not out.exists()


def test_the_nested_config_round_trips_through_json():
    config = RunConfig.flat(out="run", data="digits", widths=[5, 6], prior="ss-gl", prior_options={"lam2_rate": 1.5},
                            inclusion="0.02", shrink=True, shrink_threshold=0.1, bmr="nodewise")
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["model"]["widths"] == [5, 6] and saved["shrink"]["threshold"] == 0.1
    assert saved["model"]["inclusion"] == 0.02 and saved["bmr"]["mode"] == "nodewise"
    assert RunConfig.from_dict(saved) == config
    assert config.replace(epochs=3).training.epochs == 3 and config.training.epochs == 10


def test_unknown_flat_names_are_a_type_error_naming_them():
    with pytest.raises(TypeError, match="unknown option 'shrink_warmup_epochs'"):
        RunConfig.flat(out="run", shrink_warmup_epochs=3)
    with pytest.raises(TypeError, match="unknown option 'factor'"):
        RunConfig(out="run").replace(factor=0.5)


# the RunConfig.to_dict() of a run written before the config was nested
OLD_FLAT_RUN = {
    "out": "runs/old", "data": "digits", "net": "mlp", "widths": [24, 16], "prior": "ss-ghs", "epochs": 8,
    "batch_size": 64, "lr": 0.01, "indicator_lr": None, "lr_schedule": "constant", "lr_final_fraction": 0.1,
    "seed": 0, "data_dir": None, "download": True, "validation_fraction": 0.0, "n_train": 320, "n_test": None,
    "sigma0": None, "inclusion": 0.001, "temperature": 0.5, "rho_init": -3.0, "weight_noise": "hash", "soft": False,
    "centred": False, "threshold": 0.5, "samples": 4, "augment": None, "activation": "silu", "latency": False,
    "fine_tune_epochs": 0, "bmr": "none", "bmr_warmup": None, "shrink": True, "shrink_warmup": 10,
    "shrink_patience": 3, "shrink_threshold": 0.05, "shrink_factor": 0.5, "devices": None,
    "checkpoint_interval": 10.0, "a_field_since_removed": 1,
}


def test_an_old_flat_config_json_loads_evaluates_and_resumes(tmp_path):
    config = RunConfig.from_dict(OLD_FLAT_RUN)
    assert config == RunConfig.flat(**{k: v for k, v in OLD_FLAT_RUN.items() if k != "a_field_since_removed"})
    assert (config.data.n_train, config.model.widths, config.model.inclusion) == (320, (24, 16), 0.001)
    assert (config.shrink.enabled, config.shrink.factor, config.evaluation.samples) == (True, 0.5, 4)
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"run": OLD_FLAT_RUN}))
    (run / "metrics.json").write_text("{}")
    assert read_run(run)[0] == config
    _check_resumable(run, config.replace(epochs=20))  # more epochs: the same experiment
    with pytest.raises(RunDirectoryError, match="shrink_factor: saved 0.5, now 0.25"):
        _check_resumable(run, config.replace(shrink_factor=0.25))


def test_resuming_with_a_changed_identity_field_is_refused_naming_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = RunConfig.flat(out=str(run), data="digits", shrink=True)
    (run / "config.json").write_text(json.dumps({"run": saved.to_dict()}))
    for words, name, value in EVERY_FLAG:
        entry = next(e for e in options() if e.name == name)
        changed = saved.replace(**{name: value})
        if entry.identity and changed != saved:
            with pytest.raises(RunDirectoryError, match=f"{name}: saved"):
                _check_resumable(run, changed)
        else:
            _check_resumable(run, changed)
    # run_experiment refuses before it loads anything
    (run / "checkpoint").mkdir()
    from sparse_bnn.experiment.run import run_experiment
    with pytest.raises(RunDirectoryError, match=r"lr: saved 0.001, now 0.01"):
        run_experiment(saved.replace(lr=0.01), resume=True, progress=False)


def test_the_config_and_the_command_line_modules_import_no_jax():
    code = "import sys, sparse_bnn.experiment.config, sparse_bnn.cli; sys.exit('jax' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0
