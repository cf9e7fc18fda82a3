"""Progress bars on a terminal; silence elsewhere (scripts, CI, --json pipes)."""

from __future__ import annotations

import os
import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from ..excludes import ExcludeMatcher

if TYPE_CHECKING:  # rich costs ~60 ms to import: only load it when a bar is shown
    from rich.progress import Progress, TaskID


class ProgressBar:
    """Counts files and bytes; a scanner thread fills in the totals so the ETA means something."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._files_done = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._files_task: TaskID | None = None
        self._label = label
        self._stop = threading.Event()

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[files]} files"),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=None, files=0)
        return self

    def advance(self, files: int, nbytes: int) -> None:
        if self._progress is not None and self._task is not None:
            self._files_done += files
            self._progress.update(self._task, advance=nbytes, files=self._files_done)

    def set_total(self, nbytes: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=nbytes)

    def scan_totals(self, paths: list[str], excludes: ExcludeMatcher | None) -> None:
        """Walk the paths in the background to learn the total size (for the ETA)."""
        if not self.enabled:
            return

        def scan() -> None:
            total = 0
            stack = [os.path.abspath(p) for p in paths]
            while stack and not self._stop.is_set():
                path = stack.pop()
                try:
                    with os.scandir(path) as it:
                        for entry in it:
                            if excludes and excludes.excluded(entry.path):
                                continue
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(entry.path)
                            elif entry.is_file(follow_symlinks=False):
                                total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
            if not self._stop.is_set():
                self.set_total(total)

        threading.Thread(target=scan, daemon=True, name="scan-totals").start()

    def print(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._progress is not None:
            self._progress.stop()
