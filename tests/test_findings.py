"""The findings page (experiments/findings.py and the modules it is built from) and the paired / Holm statistics."""
from __future__ import annotations

import json
import math

import pytest
from scipy import stats as sps

from fixtures_runs import make_run
from ressenet.cli import main as cli_main
from ressenet.experiments.costs import fused_rate
from ressenet.experiments.findings import write_findings
from ressenet.experiments.stats import holm, paired

PAPER = {"optim.milestones": [32000, 48000]}


def test_paired_matches_scipy_and_holm_is_step_down():
    a, b = {1: 91.0, 2: 91.5, 3: 90.8, 4: 91.2}, {1: 90.5, 2: 91.0, 3: 90.6, 5: 80.0}
    c = paired(a, b)
    assert c.n_a == 3 and c.diff == pytest.approx(0.4)
    assert c.p == pytest.approx(sps.ttest_rel([91.0, 91.5, 90.8], [90.5, 91.0, 90.6]).pvalue)
    assert c.ci_low < c.diff < c.ci_high
    assert not paired({1: 1.0}, {1: 0.0}).tested
    adj = holm([0.01, 0.04, math.nan, 0.03])
    assert adj[0] == pytest.approx(0.03) and adj[1] == pytest.approx(0.06) and adj[3] == pytest.approx(0.06)
    assert math.isnan(adj[2])


def _runs(root, top1s: dict[str, list[float]], dataset="imagefolder"):
    for model, values in top1s.items():
        for seed, v in enumerate(values, start=1):
            make_run(root, f"{model}-{dataset}-s{seed}", model=model, dataset=dataset, seed=seed, top1=v,
                     iters=64000, overrides=PAPER)


def test_findings_page_compares_paired_and_counts_missing(tmp_path):
    runs = tmp_path / "paper"
    _runs(runs, {"resnet20": [91.0, 91.2, 90.9], "res_se_net20": [91.6, 91.9, 91.4], "se_resnet20": [91.5, 91.3]})
    make_run(runs, "short", model="resnet20", dataset="imagefolder", seed=9, iters=100)  # another protocol
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- findings:start -->\nold\n<!-- findings:end -->\n\ntail\n")
    page = write_findings(runs, tmp_path / "docs" / "findings.md", readme=readme)
    text = page.read_text()
    assert "CIFAR-10 (JPEG copy)" in text and "91.03 ± 0.15 (n=3); paper 91.40" in text
    c = paired({1: 91.6, 2: 91.9, 3: 91.4}, {1: 91.0, 2: 91.2, 3: 90.9})
    row = next(line for line in text.splitlines() if line.startswith("|") and "Res-SE-Net over ResNet" in line)
    assert f"{c.diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]" in row
    # The answer leads with the same comparison, its pairs, and where the paper's printed difference falls.
    assert (f"Res-SE-Net over ResNet at depth 20 is {c.diff:+.2f} points [{c.ci_low:+.2f}, {c.ci_high:+.2f}] over 3 "
            f"pairs, and the paper's +0.50 lies inside it.") in text
    # Two tested comparisons (paired): Res-SE-Net over ResNet (3 pairs) and over SE-ResNet (2 pairs).
    assert "all 2 tested comparisons" in text
    assert "| 20 | 2 |" in text  # the SE-ResNet comparison has two seed pairs
    assert "1 finished runs with another protocol" in text and "short" in text
    # Depth 20 of CIFAR-10 lacks SE-ResNet's third seed and ResNet without bridges: 1 + 3 runs.
    missing = next(line for line in text.splitlines() if line.startswith("| CIFAR-10 | 20 |"))
    assert "| 4 |" in missing
    assert (tmp_path / "docs" / "findings" / "top1_vs_depth.png").is_file()
    block = readme.read_text()
    assert "old" not in block and "tail" in block and "Holm p=" in block
    # Reproducible: a second run changes nothing.
    before = {p: p.read_bytes() for p in (tmp_path / "docs").rglob("*") if p.is_file()}
    write_findings(runs, tmp_path / "docs" / "findings.md", readme=readme)
    assert {p: p.read_bytes() for p in (tmp_path / "docs").rglob("*") if p.is_file()} == before


def test_findings_without_comparable_runs_says_no_answer(tmp_path):
    runs = tmp_path / "paper"
    _runs(runs, {"res_se_net20": [88.19]})
    readme = tmp_path / "README.md"
    readme.write_text("<!-- findings:start --><!-- findings:end -->\n")
    text = write_findings(runs, tmp_path / "f.md", readme=readme, figures=False).read_text()
    assert "No comparison is possible yet" in text
    assert "there is no answer yet" in readme.read_text()
    assert "In all: 119 runs" in text  # 120 cells x seeds, minus the one run present


def test_partial_jobs_are_shown_as_stopped_not_as_results(tmp_path):
    job = tmp_path / "incomplete" / "job1"
    for model, seed, acc in (("resnet20", 1, 80.0), ("resnet20", 2, 82.0), ("res_se_net20", 1, 81.0)):
        d = job / f"{model}-s{seed}"
        d.mkdir(parents=True)
        recs = [{"kind": "eval", "iter": it, "test_top1": acc + it / 1000} for it in (1000, 2000)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "paper").mkdir()
    text = write_findings(tmp_path / "paper", tmp_path / "f.md", partial_dirs=[tmp_path / "incomplete"],
                          figures=False).read_text()
    assert "stopped at iteration 2,000 of 64,000" in text
    assert "| resnet20 | 2 | 83.00 ± 1.41 |" in text


def test_findings_cli_and_rates(tmp_path, capsys):
    _runs(tmp_path / "paper", {"resnet20": [91.0]})
    assert cli_main(["report", str(tmp_path / "paper"), "--findings", str(tmp_path / "f.md"), "--no-figures"]) == 0
    assert (tmp_path / "f.md").is_file()
    assert cli_main(["report", str(tmp_path / "paper"), "--readme", "README.md"]) == 2
    assert "go with --findings" in capsys.readouterr().err
    assert fused_rate(20) == (119_000.0, True) and fused_rate(110)[1] is False


COMPRESSED = {"optim.iters": 8000, "optim.milestones": [4000, 6000], "run.precision": "bf16"}


def test_a_compressed_schedule_gets_its_own_labelled_section_and_readme_block(tmp_path):
    paper, short = tmp_path / "paper", tmp_path / "compressed"
    _runs(paper, {"res_se_net20": [91.0]})
    # Res-SE-Net clearly above ResNet (same offset every seed), indistinguishable from SE-ResNet.
    base = [84.0, 84.6, 83.8, 84.3, 84.1]
    top1s = {"resnet20": base, "res_se_net20": [v + 0.9 + 0.05 * i for i, v in enumerate(base)],
             "se_resnet20": [v + 0.9 + (0.4 if i % 2 else -0.4) for i, v in enumerate(base)],
             "resnet20_nobridge": [base[0] - 0.1, base[1] - 0.3]}
    for model, values in top1s.items():
        for seed, v in enumerate(values):
            make_run(short, f"{model}-imagefolder-s{seed}", model=model, dataset="imagefolder", seed=seed, top1=v,
                     overrides=COMPRESSED, iters=8000)
    make_run(short, "res_se_net20-imagefolder-s9", model="res_se_net20", dataset="imagefolder", seed=9,
             overrides=COMPRESSED, iters=8000, finished=False, last_iter=3000)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- findings:start -->\nold\n<!-- findings:end -->\n")
    page = write_findings(paper, tmp_path / "docs" / "findings.md", schedule_dirs=[short], readme=readme)
    text = page.read_text()
    label = "CIFAR-10 (JPEG copy), paper protocol compressed 8x (8,000 iterations, lr ÷10 at 4,000 and 6,000), bf16"
    assert f"**{label}, n = 2–5**" in text and f"--schedule {short}" in text
    section = text[text.index("## Paper protocol compressed 8x"):]
    # The full-protocol table above is untouched by these runs.
    assert "88." not in text.split("## Paper protocol compressed 8x")[0].split("## Comparisons")[0].replace("91.", "")
    c = paired(dict(enumerate(top1s["res_se_net20"])), dict(enumerate(base)))
    row = next(line for line in section.splitlines() if "| Res-SE-Net over ResNet |" in line)
    assert f"{c.diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]" in row and "| 5 |" in row and "yes" in row
    row = next(line for line in section.splitlines() if "| Res-SE-Net over SE-ResNet |" in line)
    assert row.endswith("| no |")
    assert "all 3 tested comparisons of this section" in section  # Holm within the section
    answer = text[text.index("## The answer so far"):text.index("## Paper protocol compressed 8x")]
    assert "1 of 3 comparisons show a difference" in answer
    assert "nothing here carries over from the shorter schedule to the paper's protocol" in answer
    assert "res_se_net20-imagefolder-s9 (iteration 3,000)" in section
    assert (tmp_path / "docs" / "findings" / "test_top1_compressed.png").is_file()
    assert (tmp_path / "docs" / "findings" / "train_loss_compressed.png").is_file()
    block = readme.read_text()
    assert f"**{label}, n = 2–5**" in block and "old" not in block
    # The README's verdict table: the depth comparison with its verdict, Holm over the page's 3 comparisons.
    assert "comparisons show a difference** (paired by seed" in block and "all 3 comparisons of the findings" in block
    row = next(line for line in block.splitlines() if "| Res-SE-Net over ResNet |" in line)
    assert f"{c.diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]" in row and row.endswith("| yes |")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "compressed" not in p.parts}
    write_findings(paper, tmp_path / "docs" / "findings.md", schedule_dirs=[short], readme=readme)
    assert {p: p.read_bytes() for p in before} == before


def test_schedule_text_names_a_proportional_compression_and_nothing_else():
    from ressenet.experiments.schedule_page import schedule_text

    assert schedule_text((("optim.iters", 8000), ("optim.milestones", (4000, 6000)))) == \
        "paper protocol compressed 8x (8,000 iterations, lr ÷10 at 4,000 and 6,000)"
    assert schedule_text(()) == "paper protocol (64,000 iterations)"
    assert schedule_text((("optim.iters", 8000), ("optim.milestones", (2000, 6000)))).startswith("differs from")
    assert schedule_text((("optim.iters", 8000), ("optim.lr", 0.2), ("optim.milestones", (4000, 6000)))
                         ).startswith("differs from")


def test_readme_markers_count_only_as_a_pair_on_their_own_lines(tmp_path):
    runs = tmp_path / "paper"
    _runs(runs, {"resnet20": [91.0, 91.2], "res_se_net20": [91.6, 91.9]})
    readme = tmp_path / "README.md"
    prose = "Run it; the block ends at `<!-- findings:end -->`, as you see.\n\n"
    readme.write_text(f"# x\n\n{prose}<!-- findings:start -->\nold\n<!-- findings:end -->\n\ntail\n")
    write_findings(runs, tmp_path / "docs" / "findings.md", readme=readme)
    once = readme.read_text()
    assert once.startswith(f"# x\n\n{prose}<!-- findings:start -->\n") and once.endswith("<!-- findings:end -->\n\ntail\n")
    assert "old" not in once and once.count(prose) == 1
    write_findings(runs, tmp_path / "docs" / "findings.md", readme=readme)
    assert readme.read_text() == once  # stable: nothing duplicated, nothing grows
    for text in ("<!-- findings:start -->\na\n<!-- findings:end -->\n<!-- findings:start -->\nb\n<!-- findings:end -->\n",
                 "<!-- findings:end -->\nx\n<!-- findings:start -->\n"):
        readme.write_text(text)
        with pytest.raises(ValueError, match="ambiguous; keep one start line followed by one end line"):
            write_findings(runs, tmp_path / "docs" / "findings.md", readme=readme)
        assert readme.read_text() == text
    assert not list(tmp_path.glob(".README.md.*"))


def _compressed(root, top1s: dict[str, list[float]]):
    for model, values in top1s.items():
        for seed, v in enumerate(values):
            if v is not None:
                make_run(root, f"{model}-imagefolder-s{seed}", model=model, dataset="imagefolder", seed=seed, top1=v,
                         overrides=COMPRESSED, iters=8000)


def test_the_page_leads_with_the_answer_then_the_short_schedule_then_the_full_protocol_then_what_is_missing(
        tmp_path):
    paper, short, partial = tmp_path / "paper", tmp_path / "compressed", tmp_path / "incomplete" / "job"
    _runs(paper, {"res_se_net20": [88.19]})
    d = partial / "resnet20-s1"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "iter": 1000, "test_top1": 70.0}) + "\n")
    _compressed(short, {"resnet20": [84.0, 84.2, 83.9], "res_se_net20": [83.8, 84.1, 83.7]})
    text = write_findings(paper, tmp_path / "findings.md", schedule_dirs=[short], partial_dirs=[partial.parent],
                          figures=False).read_text()
    heads = ["## The answer so far", "## Paper protocol compressed 8x", "## The paper's full protocol",
             "## GPU runs stopped before the end", "## Why our numbers sit below the paper's", "## Still missing"]
    at = [text.index(h) for h in heads]
    assert at == sorted(at)
    answer = text[at[0]:at[1]].strip().split("\n\n")[1]
    assert answer.count(". ") == 2 and answer.endswith(".")  # three sentences
    # The paper's printed number is beside ours in the short schedule's table (SE-ResNet's too, when present).
    assert "| Res-SE-Net | 20 | 3 |" in text and "| 91.90 (printed) |" in text
    # What is missing names the planned runs of the compressed folder, depth 56 included.
    missing = text[at[5]:]
    assert "resnet56 s0-s4" in missing and "se_resnet20 s0-s4" in missing and "resnet20 s3-s4" in missing
    assert "± –" not in text  # one seed: the value alone


def test_the_interval_sentence_says_what_it_excludes_and_where_the_paper_falls(tmp_path):
    short = tmp_path / "compressed"
    base = [84.0, 84.6, 83.8, 84.3, 84.1]
    _compressed(short, {"resnet20": base, "res_se_net20": [v - 0.2 + 0.03 * i for i, v in enumerate(base)]})
    (tmp_path / "paper").mkdir()
    text = write_findings(tmp_path / "paper", tmp_path / "f.md", schedule_dirs=[short], figures=False).read_text()
    c = paired(dict(enumerate(v - 0.2 + 0.03 * i for i, v in enumerate(base))), dict(enumerate(base)))
    line = next(ln for ln in text.splitlines() if ln.startswith("- Res-SE-Net over ResNet at depth 20"))
    assert f"excludes differences below {c.ci_low:+.2f} and above {c.ci_high:+.2f}, and zero" in line
    assert "the paper's +0.50 lies above its upper end" in line
    # The prespecified primary test is named before any difference, and Welch's is labelled secondary.
    assert text.index("Primary test (prespecified): the paired t-test") < text.index("| Res-SE-Net over ResNet |")
    assert "Welch (secondary)" in text and "per-comparison 95% intervals (not simultaneous)" in text
    assert "lies above its upper end" in text[text.index("## The answer so far"):text.index("## Paper protocol")]


def test_holm_runs_over_every_comparison_of_the_section_ablations_included(tmp_path):
    short = tmp_path / "compressed"
    top1s = {"resnet20": [84.0, 84.6, 83.8, 84.3], "res_se_net20": [84.2, 84.5, 84.1, 84.2],
             "se_resnet20": [84.5, 84.4, 84.9, 83.9], "resnet20_nobridge": [83.6, 83.6, 83.3, 83.4],
             "res_se_net20_se_before_conv": [84.9, 83.8, 84.0, None], "res_se_net20_se_all_identity": [83.1, 83.2]}
    _compressed(short, top1s)
    (tmp_path / "paper").mkdir()
    text = write_findings(tmp_path / "paper", tmp_path / "f.md", schedule_dirs=[short], figures=False).read_text()
    v = {m: {s: x for s, x in enumerate(xs) if x is not None} for m, xs in top1s.items()}
    pairs = [("res_se_net20", "resnet20"), ("res_se_net20", "se_resnet20"), ("resnet20_nobridge", "resnet20"),
             ("res_se_net20_se_before_conv", "res_se_net20"), ("res_se_net20_se_all_identity", "res_se_net20"),
             ("res_se_net20_se_before_conv", "resnet20"), ("res_se_net20_se_all_identity", "resnet20")]
    tests = [paired(v[a], v[b]) for a, b in pairs]
    adj = holm([t.p for t in tests])
    assert "Holm's adjustment runs over all 7 tested comparisons of this section" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| Ablation: SE on every identity connection minus "
                                                               "ResNet |"))
    assert f"Holm p={adj[-1]:.3f}" in row and "| 2 |" in row  # pairs only over the seeds both have
    row = next(ln for ln in text.splitlines() if ln.startswith("| Ablation: SE before the bridge convolution minus "
                                                               "Res-SE-Net |"))
    assert f"Holm p={adj[3]:.3f}" in row and "| 3 |" in row
    # Every family's seeds are shown, so the pairs can be checked.
    assert "| res_se_net20_se_all_identity | 83.10 | 83.20 | – | – |" in text


def test_provenance_lines_come_from_each_runs_meta(tmp_path):
    import yaml

    short = tmp_path / "compressed"
    _compressed(short, {"resnet20": [84.0, 84.2], "res_se_net20": [83.8, 84.1]})
    for run in ("resnet20-imagefolder-s0", "res_se_net20-imagefolder-s0"):
        cfg = yaml.safe_load((short / run / "config.yaml").read_text())
        cfg["meta"].update(torch="2.14.1+cu130", threads=1, precision="bf16", host="vm")
        (short / run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "paper").mkdir()
    text = write_findings(tmp_path / "paper", tmp_path / "f.md", schedule_dirs=[short], figures=False).read_text()
    assert ("- CPU model not recorded (device cpu, host vm), 1 thread per process, bf16, torch 2.14.1+cu130: "
            "res_se_net20 s0; resnet20 s0.") in text
    assert "res_se_net20 s1; resnet20 s1." in text
    assert "The runs mix 2 torch builds (2.13.0, 2.14.1+cu130)" in text
    assert "The meta records neither the CPU model" in text


def test_depth_56_joins_the_depth_figure_and_its_comparisons_when_its_runs_exist(tmp_path):
    short = tmp_path / "compressed"
    twenty = {"resnet20": [84.0, 84.2, 83.9], "res_se_net20": [83.8, 84.1, 83.7]}
    _compressed(short, twenty)
    (tmp_path / "paper").mkdir()
    text = write_findings(tmp_path / "paper", tmp_path / "f.md", schedule_dirs=[short]).read_text()
    assert "Depth 56: no finished run yet (planned: resnet56, res_se_net56, resnet56_nobridge)" in text
    _compressed(short, {"resnet56": [85.0, 85.3, 84.8], "res_se_net56": [85.2, 85.2, 85.1],
                        "resnet56_nobridge": [80.1, 80.6, 79.9]})
    text = write_findings(tmp_path / "paper", tmp_path / "f.md", schedule_dirs=[short]).read_text()
    assert "Depth 56: no finished run" not in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| ResNet without bridges minus ResNet (do bridges "
                                                               "matter?) | 56 |"))
    assert "| -15.70 |" in row  # the paper's printed difference beside ours
    assert (tmp_path / "f" / "differences_compressed.png").is_file()
    assert "resnet56 s3-s4" in text[text.index("## Still missing"):]
