"""The one progress bar of the project: tqdm on stderr when wanted and installed, else silent."""
from __future__ import annotations

import sys
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    """A bar over `total` units; update(n) advances it, close() removes it. Silent when quiet."""

    def __init__(self, total: int, desc: str, quiet: bool = False, unit: str = "it") -> None:
        self.bar: Any = None
        if not quiet:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional outside the project's own environment
                return
            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def postfix(self, **values: Any) -> None:
        """Shows values (e.g. the running perplexity) after the bar."""
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], total: int, desc: str | None, unit: str = "it") -> Iterator[T]:
    """Yields items while a bar counts them (no bar when desc is None)."""
    with Progress(total, desc or "", quiet=desc is None, unit=unit) as bar:
        for item in items:
            yield item
            bar.update()


def _rss_peak_kib() -> int:
    """Peak resident memory of this process since the last reset_peak(), in KiB (VmHWM)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak() -> None:
    """Starts a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class StageClock:
    """Wall time and peak resident memory per named stage; stages may be entered many times (one per
    block) and their times add up. table() is what the converter prints at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_kib: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self._open: list[str] = []

    def stage(self, name: str) -> "_Stage":
        return _Stage(self, name)

    def total_peak_kib(self) -> int:
        return max(self.peak_kib.values(), default=_rss_peak_kib())

    def table(self) -> str:
        total = sum(self.seconds.values())
        rows = [f"{'stage':<24} {'time':>10} {'share':>6} {'peak RSS':>10}"]
        for name, sec in self.seconds.items():
            n = self.counts[name]
            label = name if n == 1 else f"{name} (x{n})"
            rows.append(f"{label:<24} {sec:>9.1f}s {100 * sec / max(total, 1e-9):>5.1f}% "
                        f"{self.peak_kib[name] / 2**20:>8.2f} GiB")
        rows.append(f"{'total':<24} {total:>9.1f}s {'':>6} {self.total_peak_kib() / 2**20:>8.2f} GiB")
        return "\n".join(rows)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {n: {"seconds": round(self.seconds[n], 3), "peak_gib": round(self.peak_kib[n] / 2**20, 3),
                    "count": self.counts[n]} for n in self.seconds}


class _Stage:
    def __init__(self, clock: StageClock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> "_Stage":
        import time

        c = self.clock
        if not c._open:  # nested stages belong to the outer stage's window
            _reset_peak()
        c._open.append(self.name)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import time

        c = self.clock
        dt = time.perf_counter() - self.t0
        c._open.pop()
        c.seconds[self.name] = c.seconds.get(self.name, 0.0) + dt
        c.counts[self.name] = c.counts.get(self.name, 0) + 1
        c.peak_kib[self.name] = max(c.peak_kib.get(self.name, 0), _rss_peak_kib())
