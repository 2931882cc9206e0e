"""What a sweep prints: one label per point and its readings, a progress bar on a terminal."""

from __future__ import annotations

import sys

from vramfit.units import format_size


def point_label(p: dict) -> str:
    """`L2 H2 C64 T128 B4 V512`, and the family where it is not GPT-2's (`nanochat:n_kv_head=1`)."""
    label = "L{n_layer} H{n_head} C{n_embd} T{block_size} B{batch_size} V{vocab_size}".format(**p)
    return label + (f" {p['arch']}" if p.get("arch", "gpt2") != "gpt2" else "")


def reading_label(rec: dict) -> str:
    """The readings of one record in a few words."""
    st = rec.get("status")
    if st not in ("ok", "oom"):
        return f"{st}: {(rec.get('error') or '')[:80]}"
    parts = [st]
    for key, name in (("nvml_bytes", "nvml"), ("reserved_bytes", "reserved"), ("allocated_bytes", "alloc"),
                      ("tracked_bytes", "tracked"), ("rss_bytes", "rss")):
        if rec.get(key) is not None:
            parts.append(f"{name} {format_size(rec[key], 1)}")
    if rec.get("ms_per_iter"):
        parts.append(f"{rec['ms_per_iter']:.0f} ms/iter")
    return ", ".join(parts)


class Progress:
    """A rich progress bar on a terminal; one plain line per point otherwise; nothing when quiet."""

    def __init__(self, total: int, quiet: bool = False, live: bool | None = None) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.live = (sys.stdout.isatty() if live is None else live) and not quiet
        self.bar = None
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                TextColumn("{task.fields[last]}"))
            self.task = self.bar.add_task("starting", total=total, last="")
            self.bar.start()

    def started(self, label: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=label)

    def finished(self, label: str, rec: dict) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, last=f"last: {label}: {reading_label(rec)}")
        elif not self.quiet:
            print(f"[{self.done}/{self.total}] {label}: {reading_label(rec)}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
