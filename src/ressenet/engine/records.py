"""What a run reports: ``metrics.jsonl`` (one JSON object per line) and the progress display while it trains, and
the schema of ``summary.json`` when it has finished."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ressenet.engine.runfiles import parse_metrics_line, read_regular

from ressenet.engine.config import Config
from ressenet.engine.evaluation import Scores
from ressenet.engine.setup import RunData
from ressenet.engine.tensorboard import EventLog, read_metrics
from ressenet.files import atomic_write_text

__all__ = ["MetricsLog", "Progress", "summary_record"]


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only); on resume drops lines past the checkpoint."""

    def __init__(self, path: Path, enabled: bool, resume_iter: int | None, *, tensorboard: bool = False) -> None:
        self.path, self.enabled = path, enabled
        self.events = None  # TensorBoard event files beside metrics.jsonl (run.tensorboard; engine/tensorboard.py)
        if enabled and resume_iter is not None and path.exists():
            # Undecodable bytes (a torn or damaged line) become U+FFFD and that line is dropped as unreadable.
            text = (read_regular(path) or b"").decode("utf-8", errors="replace")  # a FIFO: one line, no hang
            keep = [ln for ln in text.splitlines() if ln.strip() and _line_iter(ln) <= resume_iter]
            atomic_write_text(path, "".join(ln + "\n" for ln in keep))
        elif enabled and resume_iter is None:
            path.unlink(missing_ok=True)
        if enabled and tensorboard:
            # On resume, the events are rewritten from the lines kept above, then appended to: the same steps.
            self.events = EventLog(path.parent, read_metrics(path))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
            if self.events is not None:
                self.events.write(record)


def _line_iter(line: str) -> int:
    rec = parse_metrics_line(line)  # a torn line, or an iter no int64 holds (1e999): dropped
    return rec["iter"] if rec is not None else 1 << 63


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise (``run.progress``); ``group``: the runs of a fused job,
    reported together in one line per boundary."""

    def __init__(self, mode: str, total: int, start: int, enabled: bool, *, group: bool = False) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode if enabled else "none"
        self.group = group
        self.bar = None
        if self.mode == "bar":
            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, file=sys.stderr)

    def boundary(self, recs: list[tuple[dict[str, Any], int]], images: int, seconds: float) -> None:
        """Reports the records a boundary wrote, each with the iterations its interval covered; ``images`` were
        trained in ``seconds`` by all the runs together."""
        if not self.group:
            for rec, n in recs:
                if rec["kind"] == "eval":
                    self.message(f"iter {rec['iter']}: test top-1 {rec['test_top1']:.2f}% top-5 "
                                 f"{rec['test_top5']:.2f}%" + (f"  val top-1 {rec['val_top1']:.2f}%"
                                                               if "val_top1" in rec else ""))
                self.update(rec["iter"], n, rec)
            return
        if not recs:
            return
        losses = [r["train_loss"] for r, _ in recs]
        tops = [r["test_top1"] for r, _ in recs if "test_top1" in r]
        test = f"  test top-1 {min(tops):.2f}..{max(tops):.2f}%" if tops else ""
        if self.bar is not None:
            self.bar.update(max(n for _, n in recs))
        self.message(f"iter {max(r['iter'] for r, _ in recs):>6}  {len(recs)} members: train loss {min(losses):.3f}.."
                     f"{max(losses):.3f}{test}  {images / max(seconds, 1e-9):,.0f} img/s together")

    def update(self, it: int, n: int, rec: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{rec['train_loss']:.3f}", lr=f"{rec['lr']:.3g}",
                                 img_s=f"{rec['images_per_second']:.0f}", refresh=False)
        elif self.mode == "plain":
            print(f"iter {it:>6}  epoch {rec['epoch']:>3}  loss {rec['train_loss']:.4f}  top1 {rec['train_top1']:5.2f}"
                  f"  lr {rec['lr']:.4g}  {rec['images_per_second']:.0f} img/s", flush=True)

    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary_record(cfg: Config, data: RunData, *, params: int, final: dict[str, Any], best: dict[str, Any],
                   selected: Scores | None, wall_seconds: float, images_per_second: float | None,
                   world_size: int) -> dict[str, Any]:
    """``summary.json``: the run's data, its final evaluation (``final``: the last "eval" line's test and validation
    numbers), the best-on-test (the paper's reporting, optimistic), the validation-selected checkpoint's test
    accuracy (``selected``: evaluated ``best.pt``, or None) and its costs."""
    train = data.train
    return {
        "model": cfg.model.name, "dataset": cfg.data.dataset,
        "data": {"source": train.source, "description": train.description, "lossless": train.lossless,
                 "fingerprint": data.fingerprint, "num_classes": len(train.classes), "classes": list(train.classes),
                 "train_size": len(train), "test_size": len(data.test),
                 "val_size": len(data.val) if data.val is not None else 0},
        "seed": cfg.run.seed, "iters": cfg.optim.iters, "params": params,
        "test_top1": final["test_top1"], "test_top5": final["test_top5"], "test_loss": final["test_loss"],
        "best_test_top1": max(best["test_top1"], final["test_top1"]),
        "best_test_top5": best["test_top5"] if best["test_top1"] >= final["test_top1"] else final["test_top5"],
        "best_test_iter": best["test_iter"],
        "best_test_note": "selected on the test set, as the paper's code reports: optimistic",
        "val_top1": final.get("val_top1"),
        "best_val_top1": best["val_top1"] if best["val_iter"] is not None else None,
        "best_val_iter": best["val_iter"],
        "selected_test_top1": selected.top1 if selected else None,
        "selected_test_top5": selected.top5 if selected else None,
        "wall_seconds": wall_seconds, "train_images_per_second": images_per_second,
        "world_size": world_size, "config": cfg.to_dict(),
    }
