"""What the backend answered per task, to recognise its own masks once the user accepted them.

Label Studio 1.23.2's editor (see docs/label-studio-editor.md) turns an accepted suggestion into a draft region
with the suggestion's origin ("prediction", as our answers are marked) and no parentID, and deletes the smart keypoint/rectangle that prompted it. Read as they
arrive, the accepted masks look like objects the user painted (one object per mask), and a later click of the
same object arrives without the clicks that made it. For each task the backend therefore remembers:
- every mask region it answered: region id -> (object key, frame), and the digest of the mask (bool (H, W));
- every object's keypoint and rectangle prompts (the regions themselves, parentID set to the object key).
`AnswerMemory.recognise` then rewrites the regions of the next request of that task:
- a mask region without parentID whose id is one we answered, or whose mask is bit-for-bit one we answered
  on that frame (ids changed), gets the object's key as parentID; unchanged, it is also marked
  origin "prediction" (our output, not a prompt); edited (same id, other mask) it is marked
  "prediction-changed" (as Label Studio marks an edited prediction) and stays a mask prompt of that object on its
  frame;
- the remembered prompts of every object recognised so are put back (those whose id is absent), so a
  negative click after Accept refines the object instead of arriving alone.
It also says, per (object key, frame), which id the recognised region has, so the next answer reuses it and
the editor's Accept replaces that region in place (Annotation.acceptSuggestion looks areas up by id) instead
of adding a second mask on the frame.
A mask region whose id is an object's key is the user's mask that started that object: never taken for ours,
even where our answer returned it unchanged on its frame.
A mask the backend never answered (or forgotten: least recently used tasks first out) is the user's: its own
object, returned unchanged.
The memory lives in a small SQLite file (ANSWER_MEMORY_DB), shared by the gunicorn workers of a host and kept
across restarts, so a click that lands on another worker, or after a restart, still refines the same object;
`none` keeps it in the worker's own memory. A database that cannot be opened falls back to that, with a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .labelconfig import LabelConfig
from .prompts import ObjectPrompts, PromptError, decode_bitmask, decode_brush

MASK_TYPES = ("brushlabels", "bitmasklabels")
PROMPT_TYPES = ("keypointlabels", "rectanglelabels")  # the smart tools' regions the editor deletes on Accept
MAX_TASKS = 512
log = logging.getLogger(__name__)


def mask_digest(mask: np.ndarray) -> str:
    """Digest of a bool (H, W) mask: equal digests <=> equal shape and pixels."""
    mask = np.asarray(mask, dtype=bool)
    return hashlib.sha1(repr(mask.shape).encode() + np.packbits(mask).tobytes()).hexdigest()


def region_digest(region: Mapping[str, Any]) -> str | None:
    """mask_digest of a brush/bitmask region decoded at its original size; None when it cannot be decoded."""
    width, height = region.get("original_width"), region.get("original_height")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        return None
    decode = decode_brush if region.get("type") == "brushlabels" else decode_bitmask
    try:
        return mask_digest(decode(region, width, height))
    except PromptError:
        return None


def raw_digest(region: Mapping[str, Any]) -> str:
    """Digest of a mask region's encoded value (RLE or PNG data URL): equal means the same mask, cheaply."""
    value = region.get("value") or {}
    return hashlib.sha1(repr((value.get("rle"), value.get("imageDataURL"))).encode()).hexdigest()


def _frame(region: Mapping[str, Any]) -> int:
    index = region.get("item_index")
    return index if isinstance(index, int) else 0


@dataclass
class TaskAnswers:
    """What was answered for one task."""

    regions: dict[str, tuple[str, int, str, str]] = field(default_factory=dict)  # id -> key, frame, digests
    masks: dict[tuple[int, str], str] = field(default_factory=dict)  # (frame, digest) -> key
    prompts: dict[str, list[dict]] = field(default_factory=dict)  # key -> prompt regions, parentID = key

    def to_json(self) -> str:
        return json.dumps({"regions": self.regions, "masks": [[f, d, k] for (f, d), k in self.masks.items()],
                           "prompts": self.prompts})

    @classmethod
    def from_json(cls, text: str) -> TaskAnswers:
        data = json.loads(text)
        return cls(regions={i: tuple(hit) for i, hit in data["regions"].items()},
                   masks={(f, d): k for f, d, k in data["masks"]}, prompts=data["prompts"])


class ProcessStore:
    """TaskAnswers per task in this process (thread-safe, at most `max_tasks`, least recently used out)."""

    def __init__(self, max_tasks: int = MAX_TASKS):
        self.max_tasks = max_tasks
        self._tasks: OrderedDict[str, TaskAnswers] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, task_key: str) -> TaskAnswers | None:
        with self._lock:
            found = self._tasks.get(task_key)
            if found is not None:
                self._tasks.move_to_end(task_key)
            return found

    def put(self, task_key: str, answers: TaskAnswers) -> None:
        with self._lock:
            self._tasks[task_key] = answers
            self._tasks.move_to_end(task_key)
            while len(self._tasks) > self.max_tasks:
                self._tasks.popitem(last=False)


class SqliteStore:
    """TaskAnswers per task in a SQLite file shared by processes (at most `max_tasks`, least recently written
    out: every answer writes its task, right after reading it).

    A connection per call (processes and threads alike); an error while reading or writing is logged and taken
    for "nothing remembered" (the masks then count as the user's), never raised into a request."""

    def __init__(self, path: str | Path, max_tasks: int = MAX_TASKS):
        self.path, self.max_tasks = Path(path), max_tasks
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS answers (task TEXT PRIMARY KEY, used REAL, data TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def get(self, task_key: str) -> TaskAnswers | None:
        try:
            with closing(self._connect()) as db:
                row = db.execute("SELECT data FROM answers WHERE task = ?", (task_key,)).fetchone()
            return None if row is None else TaskAnswers.from_json(row[0])
        except (sqlite3.Error, ValueError, KeyError, TypeError) as e:
            log.warning("answer memory %s: cannot read task %s (%s)", self.path, task_key, e)
            return None

    def put(self, task_key: str, answers: TaskAnswers) -> None:
        try:
            with closing(self._connect()) as db, db:
                db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                           (task_key, time.time(), answers.to_json()))
                db.execute("DELETE FROM answers WHERE task NOT IN "
                           "(SELECT task FROM answers ORDER BY used DESC LIMIT ?)", (self.max_tasks,))
        except sqlite3.Error as e:
            log.warning("answer memory %s: cannot write task %s (%s)", self.path, task_key, e)


def open_store(path: str | None, max_tasks: int = MAX_TASKS) -> ProcessStore | SqliteStore:
    """SqliteStore at `path`; ProcessStore when path is None or "none", or when the file cannot be opened."""
    if path is None or path.strip().lower() == "none":
        return ProcessStore(max_tasks)
    try:
        return SqliteStore(path, max_tasks)
    except (OSError, sqlite3.Error) as e:
        log.warning("answer memory %s cannot be opened (%s): kept in this worker's memory only", path, e)
        return ProcessStore(max_tasks)


class AnswerMemory:
    """Per-task memory of answers, kept in `store` (default: this process's memory)."""

    def __init__(self, store: ProcessStore | SqliteStore | None = None):
        self.store = ProcessStore() if store is None else store

    def _get(self, task_key: Any) -> TaskAnswers | None:
        return self.store.get(str(task_key))

    def remember(self, task_key: Any, objects: Sequence[ObjectPrompts],
                 answered: Sequence[tuple[Mapping[str, Any], str, int, np.ndarray]]) -> None:
        """Replace the task's memory of `objects` (other objects remembered earlier are kept). answered: (region,
        object key, frame, bool (H, W) mask) per mask region of the answer; objects: the objects of the request
        (their prompt `sources`)."""
        if task_key is None:
            return
        memory = TaskAnswers()
        previous = self._get(task_key)
        if previous is not None:  # objects this answer left out (not named in context.result) stay known
            fresh = {key for _, key, _, _ in answered}
            memory.regions = {i: hit for i, hit in previous.regions.items() if hit[0] not in fresh}
            memory.masks = {fd: key for fd, key in previous.masks.items() if key not in fresh}
            memory.prompts = dict(previous.prompts)
        for region, key, frame, mask in answered:
            digest = mask_digest(mask)
            memory.regions[str(region.get("id"))] = (key, frame, digest, raw_digest(region))
            memory.masks[(frame, digest)] = key
        for o in objects:
            memory.prompts[o.key] = [dict(r, parentID=o.key) for r in o.sources if r.get("type") in PROMPT_TYPES]
        self.store.put(str(task_key), memory)

    def recognise(self, task_key: Any, regions: Sequence[Mapping[str, Any]], config: LabelConfig
                  ) -> tuple[list[dict], dict[tuple[str, int], str]]:
        """(regions rewritten as the module doc says, {(object key, frame): id of the recognised region})."""
        memory = self._get(task_key) if task_key is not None else None
        out = [dict(r) for r in regions]
        if memory is None:
            return out, {}
        ids: dict[tuple[str, int], str] = {}
        keys = {hit[0] for hit in memory.regions.values()} | set(memory.prompts)
        for i, r in enumerate(out):
            if r.get("type") not in MASK_TYPES or r.get("to_name") != config.object_name or r.get("parentID"):
                continue
            if str(r.get("id")) in keys:  # a user's mask that started an object
                continue
            frame = _frame(r)
            hit = memory.regions.get(str(r.get("id")))
            if hit is not None and hit[1] == frame and raw_digest(r) == hit[3]:
                key, unchanged = hit[0], True
            elif hit is not None and hit[1] == frame:
                key, unchanged = hit[0], region_digest(r) == hit[2]
            elif (digest := region_digest(r)) is not None and (frame, digest) in memory.masks:
                key, unchanged = memory.masks[(frame, digest)], True
            else:
                continue  # the user's own mask
            # edited: Label Studio's own mark for a changed prediction, so that it is read as a prompt
            out[i] = dict(r, parentID=key, origin="prediction" if unchanged else "prediction-changed")
            ids.setdefault((key, frame), str(r.get("id")))
        present = {str(r.get("id")) for r in out if r.get("id") is not None}
        restored = [dict(p) for key in dict.fromkeys(k for k, _ in ids) for p in memory.prompts.get(key, [])
                    if str(p.get("id")) not in present]
        return restored + out, ids


def reuse_ids(result: list[dict], ids: Mapping[tuple[str, int], str]) -> list[dict]:
    """Answer regions with the id of the draft region they replace (same object key and frame), so that the
    editor's Accept replaces it in place. Regions of other (key, frame) pairs keep their ids."""
    if not ids:
        return result
    return [dict(r, id=ids[(r.get("parentID"), _frame(r))]) if (r.get("parentID"), _frame(r)) in ids else r
            for r in result]
