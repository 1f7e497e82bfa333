"""The report from fixture run directories: numbers, statistics and paper columns against hand-computed values."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from fixtures_runs import fake_trainer, make_run
from scipy import stats as sps

from ressenet.cli import main
from ressenet.experiments import runner as grid_mod
from ressenet.experiments.paper import paper_improvements, paper_result, paper_results
from ressenet.experiments.report import write_report
from ressenet.experiments.runs import collect_runs, dataset_label, parse_model
from ressenet.experiments.stats import fmt_comparison, fmt_mean_std, summarize, welch

RESNET = [91.0, 91.5, 92.5]  # mean 91.6667, sample std 0.763763
RSN = [92.0, 92.5, 93.0]  # mean 92.5, sample std 0.5


def _hand_welch(a, b):
    """Welch's t-test and 95% CI written out (Welch–Satterthwaite df), independent of the library code."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1) / na
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1) / nb
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    t = (ma - mb) / se
    p = 2 * sps.t.sf(abs(t), df)
    half = sps.t.ppf(0.975, df) * se
    return ma - mb, ma - mb - half, ma - mb + half, p, df


def test_stats_by_hand():
    s = summarize(RESNET)
    assert s.n == 3 and s.mean == pytest.approx(91.666667) and s.std == pytest.approx(0.763763, abs=1e-6)
    one = summarize([92.2])
    assert one.n == 1 and math.isnan(one.std) and fmt_mean_std(one) == "92.20 ± –"
    assert fmt_mean_std(summarize([])) == "–"
    c = welch(RSN, RESNET)
    diff, lo, hi, p, df = _hand_welch(RSN, RESNET)
    assert c.diff == pytest.approx(0.833333, abs=1e-6) == pytest.approx(diff)
    assert (c.ci_low, c.ci_high, c.p, c.df) == pytest.approx((lo, hi, p, df))
    assert df == pytest.approx(3.4483, abs=1e-4) and p == pytest.approx(0.2002, abs=1e-4)
    # n < 2 in a group: the difference only, no test, no crash.
    c1 = welch(RSN, [92.2])
    assert c1.diff == pytest.approx(0.3) and not c1.tested and "n/a" in fmt_comparison(c1)
    c0 = welch([1.0, 1.0], [1.0, 1.0])  # no spread at all
    assert c0.diff == 0 and not c0.tested
    assert math.isnan(welch([], [1.0, 2.0]).diff)


def test_paper_numbers_and_slips():
    assert len(paper_results()) == 40
    assert paper_result("resnet", 20, "cifar10").top1 == 91.4
    assert paper_result("se_resnet", 44, "cifar100").derived
    slips = {(i.over, i.depth, i.dataset, i.metric): (i.printed, i.recomputed) for i in paper_improvements() if i.slip}
    assert slips == {
        ("resnet", "average", "cifar10", "top5"): (0.504, 0.054),  # printed 0.504, the rows average 0.054
        ("resnet", "44", "cifar100", "top5"): (0.55, 0.64),  # 93.54 - 92.9 = 0.64
        ("resnet", "average", "cifar100", "top5"): (0.492, 0.51),  # the mean of the printed rows: follows 0.55
    }
    avg = next(i for i in paper_improvements() if i.over == "resnet" and i.depth == "average"
               and i.dataset == "cifar100" and i.metric == "top5")
    assert "follows a slip" in avg.note
    assert len(paper_improvements()) == 2 * 6 * 4


def test_model_names_and_dataset_labels():
    assert parse_model("res_se_net44") == ("res_se_net", 44)
    assert parse_model("resnet110_nobridge") == ("resnet_nobridge", 110)
    assert parse_model("res_se_net20_se_all_identity") == ("res_se_net_se_all_identity", 20)
    assert parse_model("wide_resnet") == (None, None)
    from fixtures_runs import DATA

    assert dataset_label({"dataset": "cifar10", "data": DATA["cifar10"]}, {}) == ("CIFAR-10", "cifar10")
    assert dataset_label({"dataset": "imagefolder", "data": DATA["imagefolder"]}, {}) == (
        "CIFAR-10 (JPEG copy)", "cifar10")
    png = {**DATA["imagefolder"], "description": "image folder /x (10 classes, PNG), train split", "lossless": True}
    assert dataset_label({"dataset": "imagefolder", "data": png}, {})[0] == "CIFAR-10 (image-folder copy)"
    # The label comes from the recorded field, never from the prose description.
    lying = {**DATA["imagefolder"], "description": "image folder /x (10 classes, PNG), train split"}
    assert dataset_label({"dataset": "imagefolder", "data": lying}, {})[0] == "CIFAR-10 (JPEG copy)"
    unknown = {k: v for k, v in DATA["imagefolder"].items() if k != "lossless"}
    assert dataset_label({"dataset": "imagefolder", "data": unknown}, {})[0] == \
        "CIFAR-10 (image-folder copy, format unrecorded)"
    other = {**DATA["imagefolder"], "test_size": 2000}
    assert dataset_label({"dataset": "imagefolder", "data": other}, {"data": {"data_root": "/x/pets"}}) == (
        "image folder pets", None)
    assert dataset_label({"dataset": "synthetic", "data": DATA["synthetic"]}, {}) == ("synthetic data", None)


# The paper's protocol (its numbers are shown only beside runs of it).
PAPER = {"iters": 64000, "overrides": {"optim.milestones": [32000, 48000]}}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, (a, b) in enumerate(zip(RESNET, RSN)):
        make_run(root, f"resnet20-cifar10-s{seed}", model="resnet20", seed=seed, top1=a, top5=99.5 + seed / 10,
                 best_top1=a + 0.3, params=272474, **PAPER)
        make_run(root, f"res_se_net20-cifar10-s{seed}", model="res_se_net20", seed=seed, top1=b, top5=99.6,
                 best_top1=b + 0.2, params=272810, **PAPER)
    make_run(root, "se_resnet20-cifar10-s0", model="se_resnet20", top1=92.2, best_top1=92.4, params=274000, **PAPER)
    for seed, v in enumerate([88.0, 88.4]):
        make_run(root, f"resnet20-imagefolder-s{seed}", model="resnet20", dataset="imagefolder", seed=seed, top1=v,
                 params=272474, **PAPER)
    make_run(root, "resnet20-synthetic-s0", model="resnet20", dataset="synthetic", top1=12.0, params=272474, **PAPER)
    make_run(root, "nested/resnet20-cifar10-iters=50-s0", model="resnet20", iters=50, top1=60.0, params=272474)
    make_run(root, "res_se_net20-cifar100-s0", model="res_se_net20", dataset="cifar100", finished=False, last_iter=40)
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_report_from_fixture_runs(runs: Path, tmp_path: Path):
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    res = write_report(runs, tmp_path / "report")
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before  # reads only
    assert res.n_runs == 11 and res.n_unfinished == 1
    out = tmp_path / "report"
    names = {p.name for p in res.csvs}
    assert names == {"runs.csv", "groups.csv", "paper_tables.csv", "improvements.csv", "paper_improvements.csv",
                     "params.csv"}
    assert len(_csv(out / "runs.csv")) == 11

    # Two protocols: the 100-iteration runs (p1, most runs) and the 50-iteration one (p2), never mixed.
    groups = {(r["protocol"], r["dataset"], r["model"]): r for r in _csv(out / "groups.csv")}
    g = groups[("p1", "CIFAR-10", "resnet20")]
    assert int(g["n"]) == 3 and g["seeds"] == "0 1 2" and g["compared_with"] == "cifar10"
    assert float(g["final_top1_mean"]) == pytest.approx(91.666667, abs=1e-5)
    assert float(g["final_top1_std"]) == pytest.approx(0.763763, abs=1e-5)
    assert float(g["best_on_test_top1_mean"]) == pytest.approx(91.966667, abs=1e-5)
    assert float(g["final_top5_mean"]) == pytest.approx(99.6, abs=1e-6)
    assert float(g["paper_top1"]) == 91.4 and float(g["paper_top5"]) == 99.74
    assert g["val_selected_top1_mean"] == ""  # no validation split: no val-selected number
    assert int(groups[("p2", "CIFAR-10", "resnet20")]["n"]) == 1
    jpeg = groups[("p1", "CIFAR-10 (JPEG copy)", "resnet20")]
    assert jpeg["compared_with"] == "cifar10" and float(jpeg["final_top1_mean"]) == pytest.approx(88.2)
    assert float(jpeg["final_top1_std"]) == pytest.approx(math.sqrt(0.08), abs=1e-5)
    syn = groups[("p1", "synthetic data", "resnet20")]
    assert syn["compared_with"] == "" and syn["paper_top1"] == ""
    se = groups[("p1", "CIFAR-10", "se_resnet20")]
    assert int(se["n"]) == 1 and se["final_top1_std"] == ""

    # The paper's tables: ours beside the printed number.
    tables = {(r["protocol"], r["table"], r["dataset"], r["depth"]): r for r in _csv(out / "paper_tables.csv")}
    base = tables[("p1", "baseline", "CIFAR-10", "20")]
    assert float(base["paper_top1"]) == 91.4 and base["paper_source"] == "printed"
    assert float(base["delta_best_on_test_top1_vs_paper"]) == pytest.approx(91.966667 - 91.4, abs=1e-5)
    assert float(tables[("p1", "proposed", "CIFAR-10", "20")]["paper_top1"]) == 91.9
    assert tables[("p1", "derived", "CIFAR-10", "20")]["paper_source"] == "derived"
    assert ("p1", "no_bridge", "CIFAR-10", "20") not in tables  # no runs of it: no row

    # Improvements: Welch test and CI recomputed by hand; the paper's printed value beside it.
    imps = {(r["protocol"], r["comparison"], r["dataset"], r["depth"]): r for r in _csv(out / "improvements.csv")}
    r = imps[("p1", "res_se_net - resnet", "CIFAR-10", "20")]
    diff, lo, hi, p, df = _hand_welch(RSN, RESNET)
    assert float(r["final_top1_diff"]) == pytest.approx(diff, abs=1e-6)
    assert float(r["final_top1_ci_low"]) == pytest.approx(lo, abs=1e-5)
    assert float(r["final_top1_ci_high"]) == pytest.approx(hi, abs=1e-5)
    assert float(r["final_top1_p"]) == pytest.approx(p, abs=1e-6)
    assert float(r["final_top1_df"]) == pytest.approx(df, abs=1e-5)
    best = _hand_welch([x + 0.2 for x in RSN], [x + 0.3 for x in RESNET])
    assert float(r["best_on_test_top1_diff"]) == pytest.approx(best[0], abs=1e-6)
    assert float(r["best_on_test_top1_p"]) == pytest.approx(best[3], abs=1e-6)
    assert float(r["paper_top1_printed"]) == 0.5 and float(r["paper_top1_recomputed"]) == 0.5
    assert r["n_a"] == "3" and r["n_b"] == "3"
    r = imps[("p1", "res_se_net - se_resnet", "CIFAR-10", "20")]
    assert float(r["final_top1_diff"]) == pytest.approx(0.3) and r["final_top1_p"] == ""  # n=1: n/a
    assert float(r["paper_top1_printed"]) == -0.2
    assert ("p1", "res_se_net - resnet", "CIFAR-10 (JPEG copy)", "20") not in imps  # no Res-SE-Net run on it

    # Paper improvements: printed vs recomputed with the slips flagged.
    slips = [x for x in _csv(out / "paper_improvements.csv") if x["slip"] == "True"]
    assert {(x["over"], x["depth"], x["dataset"], x["metric"]) for x in slips} == {
        ("resnet", "average", "cifar10", "top5"), ("resnet", "44", "cifar100", "top5"),
        ("resnet", "average", "cifar100", "top5")}

    # Parameters from the registry and the paper's claim.
    from ressenet.models import count_params, create_model

    params = {x["model"]: x for x in _csv(out / "params.csv")}
    n44 = count_params(create_model("res_se_net44", num_classes=10))
    n110 = count_params(create_model("resnet110", num_classes=10))
    assert int(params["res_se_net44"]["params_10"]) == n44 and int(params["resnet110"]["params_10"]) == n110
    assert len(params) == 20

    md = (out / "report.md").read_text()
    assert "91.67 ± 0.76" in md and "91.40" in md  # ours beside the paper's
    assert "92.20 ± –" in md  # a single run
    assert "CIFAR-10 (JPEG copy)" in md and "synthetic data" in md
    assert "+0.83 [" in md and "n/a: n=1" in md
    assert f"{100 * (1 - n44 / n110):.2f}%" in md and "61.75%" in md and "| yes |" in md
    assert "0.504 → 0.054 (slip)" in md and "0.55 → 0.64 (slip)" in md
    assert "best-on-test" in md and "val-selected" in md and "final" in md
    assert "res_se_net20-cifar100-s0" in md  # the unfinished run is listed, not used
    assert "protocol p2" in md and "optim.iters=50" in md

    # Figures: written, valid PNGs, embedded.
    assert res.figures
    fig_names = {p.name for p in res.figures}
    assert {"train_loss_cifar_10_p1.png", "top1_vs_depth_p1.png", "top1_vs_params_p1.png"} <= fig_names
    for f in res.figures:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 1000
        assert f"(figures/{f.name})" in md


def test_report_without_runs_and_missing_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    res = write_report(tmp_path / "empty", tmp_path / "rep", figures=False)
    md = res.report.read_text()
    assert res.n_runs == 0 and "No finished runs" in md and "61.75%" in md and "slip" in md
    with pytest.raises(FileNotFoundError):
        collect_runs(tmp_path / "missing")
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def test_reproduce_runs_grid_then_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(grid_mod, "_default_command", fake_trainer())
    runs, rep = tmp_path / "runs", tmp_path / "rep"
    argv = ["reproduce", "quick", "--runs-dir", str(runs), "--out", str(rep), "--seeds", "2", "--iters", "5",
            "--milestones", "3", "--no-figures"]
    assert main(argv) == 0
    groups = _csv(rep / "groups.csv")
    assert {(g["model"], g["n"]) for g in groups} == {("resnet20", "2"), ("se_resnet20", "2"), ("res_se_net20", "2")}
    assert all(float(g["final_top1_mean"]) == pytest.approx(50.5) for g in groups)  # fake: 50 + seed
    assert "optim.iters=5" in (rep / "report.md").read_text()
    assert main(argv) == 0 and "6 already done" in capsys.readouterr().out


def test_a_short_schedule_report_shows_no_paper_numbers_and_ends_with_its_answer(tmp_path, monkeypatch):
    from ressenet.experiments import figures

    root = tmp_path / "quick"
    quick = {"iters": 1000, "overrides": {"optim.milestones": [500, 750]}}
    for seed, (a, b) in enumerate(zip(RESNET, RSN)):  # one evaluation, at the end: best-on-test is the final number
        make_run(root, f"resnet20-cifar10-s{seed}", model="resnet20", seed=seed, top1=a - 25, **quick)
        make_run(root, f"res_se_net20-cifar10-s{seed}", model="res_se_net20", seed=seed, top1=b - 25, **quick)
    titles: list[tuple[str, bool]] = []
    monkeypatch.setattr(figures, "plot_train_loss", lambda gs, path, title: titles.append((title, False)) or False)
    monkeypatch.setattr(figures, "plot_top1_vs", lambda gs, path, x, title, paper=True: titles.append((title, paper)))
    md = (write_report(root, tmp_path / "report").report).read_text()
    schedule = "paper protocol compressed 64x (1,000 iterations, lr ÷10 at 500 and 750)"
    results = md[md.index("## Results"):md.index("## The paper's improvement tables")]
    assert "Paper" not in results and "91.40" not in results and "91.90" not in results
    assert results.count("not comparable") == 1 and schedule in results
    assert "best-on-test" not in results and "Top-1 best-on-test" not in md  # a copy of final here
    assert "val-selected" not in results  # no run has a validation split
    assert titles and all(schedule in title and not paper for title, paper in titles)
    answer = md[md.index("## What the comparisons show"):]
    assert f"CIFAR-10, {schedule}, n = 3" not in answer  # the tag is in the sentence only when no test ran
    assert answer.count("**At this schedule") == 1 and "Res-SE-Net over ResNet at depth 20 (3 pairs)" in answer
    assert "none of this carries over to the paper's full protocol" in answer


def test_reproduce_compares_its_runs_with_the_kept_ones_cell_by_cell(tmp_path, monkeypatch, capsys):
    import yaml

    from ressenet.experiments.gridspec import expand_grid, load_grid

    from fixtures_runs import make_cell_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(grid_mod, "_default_command", fake_trainer(fail={"anything"}))  # nothing left to train
    over = {"optim.iters": 5, "optim.milestones": [3]}
    tops = {"resnet20": [66.9, 65.5, 65.7], "se_resnet20": [66.0, 66.3, 65.6], "res_se_net20": [64.8, 65.2, 65.5]}
    sides = (("runs", 2, {"se_resnet20": -3.0}, "bf16"), ("results/quick", 3, {}, "fp32"))
    for where, seeds, shift, precision in sides:
        for cell in expand_grid(load_grid("quick"), (tmp_path / where).absolute(), seeds=seeds, overrides=over):
            out = make_cell_run(cell, top1=tops[cell.model][cell.seed] + shift.get(cell.model, 0.0) + 0.1 * seeds)
            tree = yaml.safe_load((out / "config.yaml").read_text())
            tree["meta"]["precision"] = precision
            (out / "config.yaml").write_text(yaml.safe_dump(tree))
    argv = ["reproduce", "quick", "--runs-dir", "runs", "--out", "rep", "--seeds", "2", "--iters", "5",
            "--milestones", "3", "--no-figures"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "against results/quick: 1 of 3 models differ from the kept runs beyond their seed spread (se_resnet20)" \
        in out and "precision: bf16 here, fp32 in `results/quick`" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md[md.index("## Against the kept runs in `results/quick`"):]
    assert "6 run(s) here have a namesake" in section
    assert "| `resnet20-cifar10-iters=5-milestones=3-s0` | 67.10 | 67.20 | -0.10 | bf16 / fp32 |" in section
    assert "| resnet20 |" in section and "| agree |" in section and "| differ |" in section


def test_each_family_gets_its_paper_line_whatever_came_before(tmp_path, monkeypatch):
    # resnet1202 has no printed number; the family drawn after it (SE-ResNet) still gets its dashed paper line.
    from matplotlib.axes import Axes

    from ressenet.experiments.figures import plot_top1_vs
    from ressenet.experiments.runs import group_runs

    for seed in (0, 1):
        make_run(tmp_path / "runs", f"resnet1202-cifar10-s{seed}", model="resnet1202", seed=seed)
        make_run(tmp_path / "runs", f"se_resnet20-cifar10-s{seed}", model="se_resnet20", seed=seed)
    labels: list[str] = []
    plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: labels.append(k.get("label", "")) or plot(self, *a, **k))
    groups = list(group_runs(collect_runs(tmp_path / "runs")[0]).values())
    assert plot_top1_vs(groups, tmp_path / "f.png", "depth", "t")
    assert [lbl for lbl in labels if "paper" in lbl] == ["SE-ResNet (paper, best-on-test)"]
