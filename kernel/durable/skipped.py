"""Names the namespace checkpoints leave out, told to the user once, at the right level.

Leaving a value out by choice (excluded, over the size limit, unpicklable, a
getpass() answer inside it) is informational. Leaving it out because its blob
did not fit in the store breaks the promise that the value is saved: a
``BROKEN`` notice, naming it, reaches the next cell.
"""

from __future__ import annotations

from kernel.checkpoint.manifest import CaptureReport, RestoreReport
from kernel.core.notices import BROKEN, INFO, Notify


class SkippedNames:
    """Names the namespace checkpoints leave out, reported when they start being
    skipped, not again every cell (the reason may be worded differently from one
    capture to the next). The kernel keeps one across reconnected sessions."""

    def __init__(self) -> None:
        self._reported: dict[str, str] = {}

    def restored(self, report: RestoreReport) -> None:
        self._reported = dict(report.skipped)

    def newly_skipped(self, report: CaptureReport) -> dict[str, str]:
        fresh = {n: why for n, why in report.skipped.items() if n not in self._reported}
        self._reported = dict(report.skipped)
        return fresh

    def tell(self, report: CaptureReport, notice: Notify) -> None:
        """Notify the names newly skipped by this capture: broken promises apart, as BROKEN."""
        fresh = self.newly_skipped(report)
        broken = {n: why for n, why in fresh.items() if n in report.broken}
        chosen = {n: why for n, why in fresh.items() if n not in broken}
        if broken:
            notice(f"not saved in the checkpoint, so lost if the kernel dies: {_listed(broken)}", BROKEN)
        if chosen:
            notice(f"not saved in the checkpoint: {_listed(chosen)}", INFO)


def _listed(skipped: dict[str, str]) -> str:
    return "; ".join(f"{n} ({why})" for n, why in sorted(skipped.items()))


__all__ = ["SkippedNames"]
