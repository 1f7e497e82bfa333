"""The README and the command blocks of docs/ run as written: every ``ressenet ...`` line parses with the CLI's own
parser, and every Python block runs (offline, on a tiny stand-in of the set-up's data and runs)."""
from __future__ import annotations

import re
import shlex
import tarfile
from pathlib import Path

import pytest

from cifar_fakes import write_image_folder
from ressenet.cli import build_parser
from ressenet.cli import main as cli_main
from ressenet.engine import config as config_module
from ressenet.engine.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
JPEG_ARCHIVE = "../shared/data/cifar10-jpeg.tar.gz"  # the set-up's data root, relative to the repository root
QUICK_RUN = "runs/quick/res_se_net20-imagefolder-s0"  # a run the set-up's main job leaves behind

# What turns a documented training run into a tiny one: model and data stay as written.
TINY_RUN = {"optim.batch_size": 8, "optim.iters": 4, "optim.milestones": [2, 3], "run.eval_every": 4,
            "run.log_every": 2, "run.ckpt_every": 4, "run.progress": "none", "run.device": "cpu",
            "run.compile": False}


def blocks(path: Path) -> list[tuple[str, str, str]]:
    """(section heading, language, code) of every fenced block of a Markdown file."""
    out, heading = [], ""
    for m in re.finditer(r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```", path.read_text(), re.M | re.S):
        if m.group(1):
            heading = m.group(1).lstrip("#").strip()
        else:
            out.append((heading, m.group(2), m.group(3)))
    return out


def ressenet_commands(code: str) -> list[list[str]]:
    """The arguments of every ``ressenet ...`` (or ``python -m ressenet ...``) command in a shell block."""
    found = []
    for line in code.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if "ressenet" in words:
                found.append(words[words.index("ressenet") + 1:])
    return found


def _inline_commands(path: Path) -> list[list[str]]:
    """Inline ``ressenet COMMAND ARGS...`` spans; a span of the command's name alone (``ressenet export``) names it."""
    spans = [shlex.split(m.group(1)) for m in re.finditer(r"`ressenet ([^`]+)`", path.read_text())]
    return [argv for argv in spans if len(argv) > 1]


def _doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for _, lang, code in blocks(path):
            if lang in ("bash", "sh", "shell"):
                found += [(path.name, argv) for argv in ressenet_commands(code)]
    found += [("README.md (inline)", argv) for argv in _inline_commands(REPO_ROOT / "README.md")]
    return found


def test_the_documents_have_commands_and_python_blocks():
    assert len(_doc_commands()) >= 10
    assert sum(lang == "python" for _, lang, _ in blocks(REPO_ROOT / "README.md")) >= 3
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 160


@pytest.mark.parametrize("where,argv", _doc_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_every_documented_command_parses(where, argv, capsys):
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as e:  # argparse's way of refusing (code 2), or --help (code 0)
        assert e.code == 0, f"{where}: `ressenet {' '.join(argv)}` is refused: {capsys.readouterr().err.strip()}"


@pytest.fixture(scope="module")
def set_up(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout beside a tiny ``shared/data/cifar10-jpeg.tar.gz`` image-folder archive, holding the run the main
    job leaves in ``runs/quick/`` (trained for a few iterations). Returns the checkout, the README's working folder."""
    root = tmp_path_factory.mktemp("newcomer")
    write_image_folder(root / "src" / "cifar10", train_per_class=8, test_per_class=4)
    (root / "shared" / "data").mkdir(parents=True)
    with tarfile.open(root / "shared" / "data" / "cifar10-jpeg.tar.gz", "w:gz") as tf:
        tf.add(root / "src" / "cifar10", arcname="cifar10")
    repo = root / "repo"
    repo.mkdir()
    return repo


@pytest.fixture
def in_checkout(set_up: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(set_up)
    monkeypatch.setenv("RESSENET_CACHE", str(set_up.parent / "cache"))
    load = config_module.load_config
    monkeypatch.setattr(config_module, "load_config", lambda path, over: load(path, {**over, **TINY_RUN}))
    if not (set_up / QUICK_RUN / "summary.json").is_file():
        train(load(None, {"model.name": "res_se_net20", "data.dataset": "imagefolder", "data.data_root": JPEG_ARCHIVE,
                          "run.out": QUICK_RUN, **TINY_RUN}))
    return set_up


def _readme(section: str, lang: str) -> list[str]:
    found = [code for heading, lg, code in blocks(REPO_ROOT / "README.md") if heading == section and lg == lang]
    assert found, f"README.md has no {lang} block under {section!r}"
    return found


def test_use_a_trained_model_runs_as_written_after_the_main_job(in_checkout, capsys):
    for argv in ressenet_commands(_readme("Use a trained model", "bash")[0]):
        assert cli_main(argv) == 0, f"`ressenet {' '.join(argv)}` failed: {capsys.readouterr().err.strip()}"
    for code in _readme("Use a trained model", "python"):
        exec(compile(code, "README.md", "exec"), {})


def test_the_python_api_blocks_run(in_checkout):
    for code in _readme("Python API", "python"):
        exec(compile(code, "README.md", "exec"), {})
    assert (in_checkout / "runs" / "r20" / "summary.json").is_file()


def test_the_docs_python_blocks_run(in_checkout):
    for path in DOCS[1:]:
        for _, lang, code in blocks(path):
            if lang == "python":
                exec(compile(code, path.name, "exec"), {})


def test_eval_weights_elsewhere_names_the_recorded_data_root_and_the_flag(in_checkout, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "r20.safetensors"
    assert cli_main(["export", QUICK_RUN, "--out", str(weights)]) == 0
    monkeypatch.chdir(tmp_path)  # where the recorded relative data root does not exist
    capsys.readouterr()
    assert cli_main(["eval", "--weights", str(weights), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"records the data root {JPEG_ARCHIVE}" in err and "--data-root" in err
    assert "./data" not in err.replace(f"{JPEG_ARCHIVE}", "")  # no silent fallback to a path the user never typed
    archive = in_checkout / JPEG_ARCHIVE
    assert cli_main(["eval", "--weights", str(weights), "--device", "cpu", "--data-root", str(archive)]) == 0
