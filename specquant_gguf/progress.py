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
