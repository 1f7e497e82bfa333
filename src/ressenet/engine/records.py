"""What a run reports while it trains: ``metrics.jsonl`` (one JSON object per line) and the progress display."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ressenet.engine.checkpoint import atomic_write_text
from ressenet.engine.runfiles import parse_metrics_line, read_regular

__all__ = ["MetricsLog", "Progress"]


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
            from ressenet.engine.tensorboard import EventLog, read_metrics

            # On resume, the events are rewritten from the lines kept above, then appended to: the same steps.
            self.events = EventLog(path.parent, read_metrics(path) if path.exists() else [])

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
            from tqdm import tqdm

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
