"""A real pre-annotation Worker whose ledger is a folder (engine tests without Label Studio).

`RecordingFactory` builds the real `Worker` (model, media from the fake Label Studio, tracking); only
`write_prediction` goes to `FolderLedger`, which writes one JSON file per write:
`<folder>/task<id>-attempt<n>-pid<pid>.json` holding the result. Module-level, so Ray's and multiprocessing's
workers import it by name (the repository root is on their path).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from backend.preannotate.spec import JobSpec
from backend.preannotate.worker import Worker, WorkerFactory


class FolderLedger:
    """holds(): never (every spec is tracked); write_prediction(): a file per write, its running number."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def holds(self, spec: JobSpec) -> bool:
        return False

    def write_prediction(self, spec: JobSpec, answer: dict) -> int:
        path = self.folder / f"task{spec.task_id}-attempt{spec.attempt}-pid{os.getpid()}.json"
        path.write_text(json.dumps(answer))
        return len(list(self.folder.glob("task*.json")))


def writes(folder: Path) -> dict[int, list[str]]:
    """task id -> the names of the files written for it."""
    out: dict[int, list[str]] = {}
    for path in sorted(folder.glob("task*.json")):
        out.setdefault(int(path.name.split("-")[0][4:]), []).append(path.name)
    return out


@dataclass(frozen=True)
class RecordingFactory(WorkerFactory):
    folder: str = ""

    def __call__(self, device: str | None = None) -> Worker:
        worker = super().__call__(device)
        worker.ledger = FolderLedger(self.folder)
        return worker
