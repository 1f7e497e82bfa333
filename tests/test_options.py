"""Options that explain themselves: config fields carry help, default and choices; `ressenet train --help` is
generated from them; every name is checked (with a did-you-mean) before anything touches the disk."""
from __future__ import annotations

import re
from dataclasses import MISSING, fields

import pytest

from ressenet.cli import TRAIN_FLAGS, TRAIN_SWITCHES, build_parser, main, train_overrides
from ressenet.engine.config import SECTIONS, Config, ConfigError, check_choice, field_choices, load_config
from ressenet.names import closest, suggest

# The flags `ressenet train` had before they were generated; scripts and docs use them.
OLD_FLAGS = {
    "--model": "model.name", "--num-classes": "model.num_classes", "--shortcut": "model.shortcut",
    "--se-reduction": "model.se_reduction", "--layout": "model.layout",
    "--dataset": "data.dataset", "--data-root": "data.data_root", "--cache-dir": "data.cache_dir",
    "--val-split": "data.val_split", "--normalization": "data.normalization",
    "--iters": "optim.iters", "--batch-size": "optim.batch_size", "--lr": "optim.lr", "--momentum": "optim.momentum",
    "--weight-decay": "optim.weight_decay", "--milestones": "optim.milestones", "--gamma": "optim.gamma",
    "--out": "run.out", "--seed": "run.seed", "--device": "run.device", "--precision": "run.precision",
    "--eval-every": "run.eval_every", "--log-every": "run.log_every", "--ckpt-every": "run.ckpt_every",
    "--eval-batch-size": "run.eval_batch_size", "--progress": "run.progress", "--compile-mode": "run.compile_mode",
}
OLD_SWITCHES = {
    "nesterov": "optim.nesterov", "channels-last": "run.channels_last", "compile": "run.compile",
    "sync-bn": "run.sync_bn", "download": "data.download", "augment": "data.augment",
}


def _help(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no wrapping inside what is asserted
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _option_line(text: str, flag: str) -> str:
    """The option's entry in --help: its line and the help argparse puts on the next one for a long metavar."""
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if re.match(rf"\s+{re.escape(flag)}[ ,]", ln))
    more = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].lstrip().startswith("-") else ""
    return f"{lines[i]} {more.strip()}"


# ------------------------------------------------------------------------------------------------------------------
# Metadata and generated flags
# ------------------------------------------------------------------------------------------------------------------
def test_every_config_field_explains_itself():
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            assert isinstance(f.metadata.get("help"), str) and f.metadata["help"].strip(), f"{section}.{f.name}"
            assert f.default is not MISSING or f.default_factory is not MISSING, f"{section}.{f.name}"
    assert set(SECTIONS) == {f.name for f in fields(Config)}


def test_fixed_choices_are_data():
    expected = {
        "run.precision": ("auto", "fp32", "bf16", "fp16"), "run.progress": ("auto", "bar", "plain", "none"),
        "data.normalization": ("paper", "dataset"), "model.shortcut": ("A", "B"),
        "model.layout": ("basic", "released"), "data.dataset": ("cifar10", "cifar100", "imagefolder", "synthetic"),
    }
    by_key = {f"{s}.{f.name}": f for s, cls in SECTIONS.items() for f in fields(cls)}
    for key, choices in expected.items():
        assert field_choices(by_key[key]) == choices, key
    assert {"auto", "default", "reduce-overhead", "max-autotune"} <= set(field_choices(by_key["run.compile_mode"]))
    assert "res_se_net20" in field_choices(by_key["model.name"])  # from the model registry, at run time


def test_generated_flags_keep_the_old_names_and_keys():
    # The old flags unchanged, plus the ones added since (each with its config key).
    assert TRAIN_FLAGS == {**OLD_FLAGS, "--log-grad-stats": "run.grad_stats_every"}
    assert TRAIN_SWITCHES == {**OLD_SWITCHES, "tensorboard": "run.tensorboard"}


def test_train_help_shows_what_default_and_choices(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "train")
    iters = _option_line(text, "--iters")
    assert "default: 64000" in iters and "iterations" in iters
    assert "default: 32000,48000" in _option_line(text, "--milestones")
    assert "--precision {auto,fp32,bf16,fp16}" in text
    assert "--progress {auto,bar,plain,none}" in text and "--shortcut {A,B}" in text
    assert "--dataset {cifar10,cifar100,imagefolder,synthetic}" in text
    assert "--device {auto,cpu,cuda,cuda:N}" in text and "--layout {basic,released}" in text
    assert "--normalization {paper,dataset}" in text
    model = _option_line(text, "--model")
    assert "comma" in model and "ressenet models" in model and "default: res_se_net20" in model
    assert "comma" in _option_line(text, "--seed") and "default: 12" in _option_line(text, "--seed")
    assert "default: on" in _option_line(text, "--augment") and "default: off" in _option_line(text, "--nesterov")
    assert "sets " not in text  # no flag is left without its explanation
    for flag in (*OLD_FLAGS, *(f"--{s}" for s in OLD_SWITCHES)):
        assert "default: " in _option_line(text, flag), flag


def test_grid_help_shares_the_options_but_not_model_seed_out(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "grid")
    assert "--precision {auto,fp32,bf16,fp16}" in text and "default: the preset's, else 64000" in text
    assert not re.search(r"\s--(model|seed|out)\s", text)


# ------------------------------------------------------------------------------------------------------------------
# Names: did-you-mean, one line, nothing on disk
# ------------------------------------------------------------------------------------------------------------------
def test_suggest():
    assert suggest("resnet21", ["resnet20", "resnet32", "resnet110"]) == "did you mean 'resnet20'? "
    assert suggest("bf61", ("auto", "fp32", "bf16", "fp16")) == "did you mean 'bf16'? "
    assert suggest("CIFAR10", ("cifar10", "cifar100")) == "did you mean 'cifar10'? "
    assert suggest("zzzz", ("cifar10", "cifar100")) == ""
    assert closest("cifar1O", ("cifar10", "cifar100", "imagefolder", "synthetic")) == "cifar10"


@pytest.mark.parametrize("argv, key, hint", [
    (["--model", "resnet21"], "unknown model 'resnet21'", "did you mean 'resnet20'?"),
    (["--model", "resnet20,res_se_nett20", "--seed", "1,2"], "unknown model 'res_se_nett20'",
     "did you mean 'res_se_net20'?"),
    (["--dataset", "cifar1O"], "data.dataset='cifar1O'", "did you mean 'cifar10'?"),
    (["--precision", "bf61"], "run.precision='bf61'", "did you mean 'bf16'?"),
    (["--device", "cuad"], "run.device='cuad'", "did you mean 'cuda'?"),
    (["--device", "gpu:1"], "run.device='gpu:1'", "did you mean 'cuda:1'?"),
    (["--layout", "relased"], "model.layout='relased'", "did you mean 'released'?"),
    (["--normalization", "papr"], "data.normalization='papr'", "did you mean 'paper'?"),
    (["--progress", "bars"], "run.progress='bars'", "did you mean 'bar'?"),
    (["--shortcut", "BB"], "model.shortcut='BB'", "did you mean 'B'?"),
])
def test_a_typo_exits_2_with_one_line_and_creates_nothing(tmp_path, capsys, argv, key, hint):
    out = tmp_path / "new" / "X"
    base = ["train", "--model", "resnet20", "--dataset", "synthetic", "--iters", "1", "--device", "cpu"]
    assert main([*base, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and hint in err[0], err
    assert not (tmp_path / "new").exists()


def test_a_typo_in_the_config_file_is_caught_too(tmp_path, capsys):
    yml = tmp_path / "c.yaml"
    yml.write_text("data:\n  dataset: cifar1O\n")
    out = tmp_path / "X"
    assert main(["train", "--config", str(yml), "--iters", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'cifar10'?" in err[0] and not out.exists()


def test_validate_checks_every_name():
    for key, bad in (("model.name", "resnet21"), ("data.dataset", "cifar1O"), ("run.precision", "bf61"),
                     ("run.device", "cuda:x"), ("run.compile_mode", "max_autotune"), ("model.layout", "basics")):
        cfg = Config()
        section, _, name = key.partition(".")
        setattr(getattr(cfg, section), name, bad)
        with pytest.raises(ConfigError, match="did you mean"):
            cfg.validate()
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:7"):
        check_choice("run.device", device)
    check_choice("model.shortcut", "a")  # the model accepts either case
    check_choice("model.layout", None)  # None: the model's default


def test_eval_checks_names_first(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--dataset", "cifar1O"]) == 2
    assert "did you mean 'cifar10'?" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# --config YAML still works with the generated flags
# ------------------------------------------------------------------------------------------------------------------
def test_yaml_config_with_flags_on_top(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("model:\n  name: se_resnet20\n  shortcut: A\noptim:\n  iters: 500\n  milestones: [100, 400]\n"
                   "run:\n  precision: fp32\n  compile: false\n")
    args = build_parser().parse_args(["train", "--config", str(yml), "--lr", "0.05", "--no-augment",
                                      "--progress", "none"])
    cfg = load_config(args.config, train_overrides(args))
    assert (cfg.model.name, cfg.model.shortcut, cfg.optim.iters, cfg.optim.milestones) == \
        ("se_resnet20", "A", 500, [100, 400])
    assert (cfg.run.precision, cfg.run.compile, cfg.optim.lr, cfg.data.augment, cfg.run.progress) == \
        ("fp32", False, 0.05, False, "none")
    assert cfg.optim.batch_size == 128  # untouched: the dataclass default
    args = build_parser().parse_args(["train", "--config", str(yml), "--iters", "700"])
    assert load_config(args.config, train_overrides(args)).optim.iters == 700  # flags override the file


def test_every_option_of_every_command_has_help_text():
    import argparse

    from ressenet.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not action.help and not isinstance(action, argparse._HelpAction):
                missing.append(f"ressenet {' '.join(path)} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), [])
    assert not missing, f"options without help text: {missing}"
