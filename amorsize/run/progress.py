"""Progress reporting: the items done so far, to a tqdm bar and an ``on_progress`` callback."""

from __future__ import annotations

from typing import Any, Callable, Optional

from amorsize._validate import invalid_value


class Progress:
    """Counts finished items (results and failures alike) and reports them."""

    def __init__(
        self, total: Optional[int], bar: bool, on_progress: Optional[Callable[[int, Optional[int]], Any]]
    ) -> None:
        self.total = total
        self.done = 0
        self.on_progress = on_progress
        self.bar = _progress_bar(total) if bar else None

    def advance(self, n_items: int, n_failed: int, failed_so_far: int) -> None:
        self.done += n_items
        if self.bar is not None:
            self.bar.update(n_items)
            if n_failed:
                self.bar.set_postfix(failed=failed_so_far, refresh=False)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(total: Optional[int]) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise invalid_value(
            "progress", True, "False, or install the extra: pip install 'amorsize[progress]'"
        ) from None
    return tqdm(total=total, unit="item", dynamic_ncols=True)
