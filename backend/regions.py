"""Regions as they enter the backend, checked against a declarative schema before any other code reads them.

Checked: every region of `params.context.result` and of each task's `annotations[].result`, `drafts[].result`
and `predictions[].result`, and the annotation, draft and prediction objects around them. One pydantic v2 model
per region type the backend reads (videorectangle, keypointlabels, rectanglelabels, brushlabels, bitmasklabels);
a region of any other type needs only the fields every region shares (it is ignored by prompts.py).

The schema holds the types and shapes the backend reads, nothing more: extra fields are allowed everywhere
(Label Studio sends many), optional fields may be missing (the event protocol's prompts carry no id or
from_name). Values that are well-formed but unusable (a keyframe past the video, a box outside the frame) are
prompts.py's to refuse (422).

`checked_request` is the one entry: interactive requests (a context is given) answer the first bad region with
a 400 naming its path, e.g. `tasks[0].drafts[1].result[3].value.sequence[0].x`; batch requests leave bad
regions (and bad annotation objects) out, each with a warning. Tasks and context come back as the same plain
dicts, with lists copied where something was left out; the models are not passed on.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from .errors import BackendError

logger = logging.getLogger(__name__)

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # a JSON number (int or float), finite
Labels = list[StrictStr]
Size = Annotated[StrictInt, Field(gt=0)]
Byte = Annotated[StrictInt, Field(ge=0, le=255)]


def _string_or_integer(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise ValueError(f"must be a string or an integer, got {type(value).__name__}")
    return value


RegionId = Annotated[Any, AfterValidator(_string_or_integer)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


# ---------------------------------------------------------------- regions


class Region(_Schema):
    """The fields every region shares; the whole schema of a region type the backend ignores."""

    id: RegionId = None
    type: StrictStr
    from_name: StrictStr | None = None
    to_name: StrictStr | None = None
    parentID: StrictStr | None = None
    item_index: StrictInt | None = None
    is_positive: StrictBool | None = None
    value: Any = None


class _Box(_Schema):
    """A rectangle in percent of the frame (rotation in degrees)."""

    x: Number
    y: Number
    width: Number
    height: Number
    rotation: Number | None = None


class Keyframe(_Box):
    """One item of a videorectangle's value.sequence (1-based frame)."""

    frame: Number
    enabled: StrictBool = True


class VideoRectangleValue(_Schema):
    sequence: list[Keyframe] = []
    labels: Labels | None = None


class KeyPointValue(_Schema):
    x: Number
    y: Number
    keypointlabels: Labels | None = None
    positive: StrictBool | None = None
    is_positive: StrictBool | None = None


class RectangleValue(_Box):
    rectanglelabels: Labels | None = None


class BrushValue(_Schema):
    format: StrictStr | None = None
    rle: list[Byte] | None = None
    brushlabels: Labels | None = None


class BitmaskValue(_Schema):
    imageDataURL: StrictStr
    bitmasklabels: Labels | None = None


class VideoRectangleRegion(Region):
    value: VideoRectangleValue


class KeyPointRegion(Region):
    value: KeyPointValue


class RectangleRegion(Region):
    value: RectangleValue


class BrushRegion(Region):
    value: BrushValue
    original_width: Size | None = None
    original_height: Size | None = None


class BitmaskRegion(Region):
    value: BitmaskValue


SCHEMAS: dict[str, type[Region]] = {
    "videorectangle": VideoRectangleRegion,
    "keypointlabels": KeyPointRegion,
    "rectanglelabels": RectangleRegion,
    "brushlabels": BrushRegion,
    "bitmasklabels": BitmaskRegion,
}


class Annotation(_Schema):
    """An annotation, draft or prediction of a task (its result's regions are checked one by one)."""

    id: StrictInt | None = None
    result: list | None = None
    was_cancelled: StrictBool | None = None
    created_at: StrictStr | None = None
    updated_at: StrictStr | None = None


# ---------------------------------------------------------------- checking


class RegionError(BackendError):
    """A malformed region (or annotation object) in a request; `path` names it."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}", 400)
        self.path = path


def _path(loc: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _check(model: type[_Schema], item: Any, path: str) -> None:
    """RegionError naming the first bad field of `item` under `path`."""
    try:
        model.model_validate(item)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        raise RegionError(path + _path(error["loc"]), error["msg"]) from None


def check_region(region: Any, path: str) -> None:
    """RegionError unless `region` is a region object its type's schema accepts."""
    if not isinstance(region, Mapping):
        raise RegionError(path, f"a region must be an object, got {type(region).__name__}")
    kind = region.get("type")
    _check(SCHEMAS.get(kind, Region) if isinstance(kind, str) else Region, region, path)


def _regions(items: list, path: str, keep: Callable[[RegionError], bool]) -> list:
    out = []
    for i, region in enumerate(items):
        try:
            check_region(region, f"{path}[{i}]")
        except RegionError as exc:
            if not keep(exc):
                continue
        out.append(region)
    return out


def _annotations(items: list, path: str, keep: Callable[[RegionError], bool]) -> list:
    out = []
    for i, annotation in enumerate(items):
        where = f"{path}[{i}]"
        try:
            if not isinstance(annotation, Mapping):
                raise RegionError(where, f"must be an object, got {type(annotation).__name__}")
            _check(Annotation, annotation, where)
        except RegionError as exc:
            if not keep(exc):
                continue
        if annotation.get("result"):
            annotation = {**annotation, "result": _regions(annotation["result"], f"{where}.result", keep)}
        out.append(annotation)
    return out


def checked_request(tasks: list[dict], context: Mapping[str, Any] | None
                    ) -> tuple[list[dict], Mapping[str, Any] | None]:
    """(tasks, context) with every region checked (see module doc): raises RegionError when `context` is given
    (interactive), else leaves bad items out with a warning (batch). `tasks` are objects (protocol.py checks)."""
    interactive = context is not None

    def keep(exc: RegionError) -> bool:
        if interactive:
            raise exc
        logger.warning("left out of the batch request: %s", exc)
        return False

    if context is not None and isinstance(context.get("result"), list):
        context = {**context, "result": _regions(context["result"], "params.context.result", keep)}
    out = []
    for t, task in enumerate(tasks):
        task = dict(task)
        for key in ("annotations", "drafts", "predictions"):
            items = task.get(key)
            if items is None:
                continue
            if not isinstance(items, list):
                keep(RegionError(f"tasks[{t}].{key}", f"must be a list, got {type(items).__name__}"))
                task[key] = []
                continue
            task[key] = _annotations(items, f"tasks[{t}].{key}", keep)
        out.append(task)
    return out, context
