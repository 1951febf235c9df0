"""``pyrepl3 export``: put the outputs the store holds back into a notebook file.

A kernel stores every execution's outputs in its ``exec:<msg_id>`` promise,
also those produced while no frontend was connected (a page closed during a
long cell): the notebook file never saw them. JupyterLab sends each cell's
nbformat id with the execute_request (``metadata.cellId``) and the kernel
keeps it (``cell_id``), so the latest settled execution of a cell can be found
by that id. A ``pyrepl3 run`` session is matched by the msg_ids it derives
from the notebook (:func:`kernel.cli.run.cell_msg_ids`) as well.

Which session: the one given, else the sessions whose executions carry this
notebook's cells (jupyter_server names a notebook's session after its path
relative to the server root, which the command cannot know), the most
recently active first. Markdown cells and cells with no stored execution are
left as they are; the file is replaced atomically.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from kernel.cli.run import cell_msg_ids, run_session
from kernel.core.errors import PyRepl3Error
from kernel.core.ids import exec_id
from kernel.core.models import ExecutionSummary
from kernel.store.base import BlobStore, Catalog
from kernel.store.large_outputs import resolve
from kernel.store.records import TERMINAL, outputs_of

#: The output types a notebook file may hold (the store records nothing else, but a file must validate).
NOTEBOOK_OUTPUTS = ("stream", "display_data", "execute_result", "error")


@dataclass
class FilledCell:
    """One code cell given the outputs of a stored execution."""

    index: int
    cell_id: str | None
    execution: str
    execution_count: int | None
    state: str
    outputs: int
    #: The cell's source is not the code that ran (edited since).
    source_changed: bool


@dataclass
class ExportReport:
    notebook: str
    output: str
    session: str
    filled: list[FilledCell] = field(default_factory=list)
    #: Indexes of code cells with no settled execution in the session.
    missing: list[int] = field(default_factory=list)
    #: Indexes of code cells whose latest execution is still running (the previous settled one, if any, was used).
    running: list[int] = field(default_factory=list)
    #: Other sessions that carry this notebook's cells, most recently active first.
    other_sessions: list[str] = field(default_factory=list)

    def as_data(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        text = (
            f"{len(self.filled)} cells filled from session {self.session}, "
            f"{len(self.missing)} without stored outputs"
        )
        if self.running:
            text += f", {len(self.running)} still running"
        return f"{text}; wrote {self.output}"


class _Matcher:
    """Which of a session's executions belong to which code cell of the notebook."""

    def __init__(self, nb: Any, session: str) -> None:
        self.by_cell_id = {c.get("id"): i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("id")}
        self.by_exec_id = {exec_id(m): i for i, m in cell_msg_ids(nb, session).items()}

    def index(self, row: ExecutionSummary) -> int | None:
        found = self.by_exec_id.get(row.id)
        return found if found is not None else self.by_cell_id.get(row.cell_id)


def _read(path: Path) -> Any:
    try:
        return nbformat.read(path, as_version=4)
    except FileNotFoundError:
        raise PyRepl3Error(f"no notebook at {path}") from None
    except (OSError, ValueError) as exc:  # nbformat's NotJSONError is a ValueError
        raise PyRepl3Error(f"cannot read {path} as a notebook: {exc}") from None


def matching_sessions(catalog: Catalog, nb: Any, path: Path) -> list[str]:
    """Sessions with executions of this notebook's cells (by cell id, or a ``pyrepl3 run`` of it), most recent first."""
    cell_ids = {c.get("id") for c in nb.cells if c.cell_type == "code" and c.get("id")}
    run = run_session(path)
    run_ids = {exec_id(m) for m in cell_msg_ids(nb, run).values()}
    found = {row.session for row in catalog.executions() if row.cell_id in cell_ids or (row.session == run and row.id in run_ids)}
    return [s["session"] for s in catalog.sessions() if s["session"] in found]


def _choose_session(catalog: Catalog, nb: Any, path: Path, session: str | None) -> tuple[str, list[str]]:
    if session is not None:
        return session, []
    found = matching_sessions(catalog, nb, path)
    if not found:
        n = sum(1 for c in nb.cells if c.cell_type == "code")
        raise PyRepl3Error(
            f"no session in this store has executions of the {n} code cells of {path} (by cell id, "
            "or a `pyrepl3 run` of it). Pass the session: `pyrepl3 export NOTEBOOK --session S`; "
            "`pyrepl3 sessions` lists them, `pyrepl3 executions --session S` shows what each ran "
            "(check --home / --store name the kernel's store)."
        )
    return found[0], found[1:]


def fill(nb: Any, catalog: Catalog, session: str, blobs: BlobStore | None = None) -> ExportReport:
    """Give each code cell the outputs of its latest settled execution in ``session`` (``nb`` is changed)."""
    matcher = _Matcher(nb, session)
    latest: dict[int, ExecutionSummary] = {}
    running: set[int] = set()
    for row in catalog.executions(session):  # oldest first
        index = matcher.index(row)
        if index is None:
            continue
        if row.state in TERMINAL:
            latest[index] = row
            running.discard(index)
        else:
            running.add(index)
    report = ExportReport(notebook="", output="", session=session, running=sorted(running))
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        row = latest.get(index)
        rec = catalog.promise(row.id) if row is not None else None
        if row is None or rec is None:
            report.missing.append(index)
            continue
        outputs = [nbformat.from_dict(o) for o in resolve(outputs_of(rec), blobs) if o.get("output_type") in NOTEBOOK_OUTPUTS]
        cell.outputs = outputs
        cell.execution_count = row.execution_count
        report.filled.append(
            FilledCell(index, cell.get("id"), row.id, row.execution_count, row.state, len(outputs), row.code != cell.source)
        )
    return report


def write_atomically(nb: Any, target: Path) -> None:
    """Write ``nb`` to a temporary file beside ``target``, then rename it over: never a half-written notebook."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_notebook(
    path: Path, catalog: Catalog, *, session: str | None = None, output: Path | None = None, blobs: BlobStore | None = None
) -> ExportReport:
    """Fill ``path``'s cells from the store and write the result to ``output`` (default: ``path`` itself);
    ``blobs`` holds the large outputs (:mod:`kernel.store.large_outputs`)."""
    path = Path(path)
    nb = _read(path)
    chosen, others = _choose_session(catalog, nb, path, session)
    report = fill(nb, catalog, chosen, blobs)
    if not report.filled:
        still = f" ({len(report.running)} still running)" if report.running else ""
        raise PyRepl3Error(
            f"session {chosen!r} has no settled execution of a code cell of {path}{still}, matched by cell id"
            " or as a `pyrepl3 run` of it; `pyrepl3 executions --session S` shows what it ran. Nothing written."
        )
    target = Path(output) if output is not None else path
    write_atomically(nb, target)
    report.notebook, report.output, report.other_sessions = str(path), str(target), others
    return report
