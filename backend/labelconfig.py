"""Detect what a Label Studio label config asks of the backend.

Parsing is done by `label_studio_sdk.label_interface.LabelInterface`; this module only picks the
one media tag we work on, its control tags, and the control that receives the model's output.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from label_studio_sdk.label_interface import LabelInterface

from .frametime import FrameTimeError, editor_framerate

Kind = Literal["video", "image_sequence", "image"]

#: Control tags the backend reads or writes, by Label Studio tag name.
SUPPORTED_CONTROLS = (
    "VideoRectangle",
    "KeyPointLabels",
    "RectangleLabels",
    "BrushLabels",
    "BitmaskLabels",
    "Labels",
)
MASK_OUTPUTS = ("BitmaskLabels", "BrushLabels")  # preference order

SUPPORTED_CONFIGS = (
    "Supported label configs: "
    '(1) video: <Video name="..." value="$..."/> with a <VideoRectangle toName="..."/> '
    "(optionally <Labels> on the same video); "
    '(2) image sequence: <Image name="..." valueList="$..."/>, or single image: '
    '<Image name="..." value="$..."/>, with <BrushLabels> or <BitmaskLabels> for the output masks, '
    "prompted by <KeyPointLabels>, <RectangleLabels> and/or the brush itself."
)


class LabelConfigError(ValueError):
    """The label config cannot be used by this backend; the message says what is supported."""


@dataclass(frozen=True)
class ControlTag:
    """One control tag of the config, e.g. ControlTag("box", "VideoRectangle", ())."""

    name: str
    type: str
    labels: tuple[str, ...]

    @property
    def result_type(self) -> str:
        """The `type` of the results this control produces, e.g. "brushlabels"."""
        return self.type.lower()


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a label config the backend uses.

    kind: "video" (<Video>), "image_sequence" (<Image valueList>) or "image" (<Image value>).
    object_name / object_type: the media tag, e.g. "video" / "Video".
    value_key: the task data key holding the media ("video" for value="$video").
    controls: control tags aimed at the media tag, by tag type (only SUPPORTED_CONTROLS).
    output: where results are written: the VideoRectangle for video, else the mask control
        (BitmaskLabels if the config has one, else BrushLabels).
    output_labels: label values for the output (video: those of the <Labels> on the video).
    framerate: video only, the raw framerate attribute ("25", "$fps"); see `fps()`.
    """

    kind: Kind
    object_name: str
    object_type: str
    value_key: str
    controls: Mapping[str, tuple[ControlTag, ...]]
    output: ControlTag
    output_labels: tuple[str, ...]
    framerate: str | None = None

    def control_names(self, *types: str) -> set[str]:
        """Names of the controls of the given tag types."""
        return {c.name for t in types for c in self.controls.get(t, ())}

    def fps(self, task_data: Mapping[str, Any] | None = None) -> float:
        """The frame rate Label Studio's editor numbers this video's frames with (frametime.editor_framerate:
        the framerate attribute, "$key" from the task data; 24 when absent, 0 or not a number; 1/F below 1)."""
        if self.kind != "video":
            raise LabelConfigError("fps is only defined for video configs")
        try:
            return editor_framerate(self.framerate, task_data)
        except FrameTimeError as exc:
            raise LabelConfigError(str(exc)) from None

    def media(self, task_data: Mapping[str, Any]) -> str | list[str]:
        """The media reference in a task's data: a URL, or a list of URLs for an image sequence."""
        if self.value_key not in task_data:
            tag = f'<{self.object_type} name="{self.object_name}">'
            raise LabelConfigError(f'task data has no "{self.value_key}" for {tag}')
        value = task_data[self.value_key]
        if self.kind == "image_sequence":
            if not isinstance(value, list) or not value:
                raise LabelConfigError(f'task data "{self.value_key}" must be a non-empty list of image URLs')
            return [str(v) for v in value]
        return str(value)


def _attr(attrs: Mapping[str, Any], name: str) -> str | None:
    """Attribute lookup ignoring case (Label Studio lower-cases attribute names)."""
    for key, value in attrs.items():
        if key.lower() == name.lower():
            return value
    return None


def parse_label_config(xml: str) -> LabelConfig:
    """Parse a label config XML and detect the project kind; raises LabelConfigError."""
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises its own non-ValueError exceptions for bad XML
        raise LabelConfigError(f"cannot parse the label config ({exc}). {SUPPORTED_CONFIGS}") from exc

    candidates = []
    for obj in interface.objects:
        aimed = [c for c in interface.controls if obj.name in (c.to_name or []) and c.tag in SUPPORTED_CONTROLS]
        types = {c.tag for c in aimed}
        if obj.tag == "Video" and "VideoRectangle" in types:
            candidates.append((obj, aimed))
        elif obj.tag == "Image" and types & set(MASK_OUTPUTS):
            candidates.append((obj, aimed))
    if not candidates:
        raise LabelConfigError(f"no supported media/control combination found. {SUPPORTED_CONFIGS}")
    if len(candidates) > 1:
        names = ", ".join(f'<{o.tag} name="{o.name}">' for o, _ in candidates)
        raise LabelConfigError(f"ambiguous config: several media tags could be labeled ({names}). {SUPPORTED_CONFIGS}")

    obj, aimed = candidates[0]
    controls: dict[str, tuple[ControlTag, ...]] = {}
    for c in aimed:
        controls.setdefault(c.tag, ())
        controls[c.tag] += (ControlTag(c.name, c.tag, tuple(c.labels or ())),)

    value_list = _attr(obj.attr, "valueList")
    raw_value = value_list if value_list is not None else _attr(obj.attr, "value")
    if not raw_value or not raw_value.startswith("$") or len(raw_value) < 2:
        raise LabelConfigError(
            f'<{obj.tag} name="{obj.name}"> must take its media from task data, e.g. value="$video"; '
            f"got {raw_value!r}. {SUPPORTED_CONFIGS}"
        )

    if obj.tag == "Video":
        output = controls["VideoRectangle"][0]
        labels = controls.get("Labels", ())
        return LabelConfig(
            kind="video",
            object_name=obj.name,
            object_type=obj.tag,
            value_key=raw_value[1:],
            controls=controls,
            output=output,
            output_labels=labels[0].labels if labels else (),
            framerate=_attr(obj.attr, "frameRate"),
        )
    output = next(controls[t][0] for t in MASK_OUTPUTS if t in controls)
    return LabelConfig(
        kind="image_sequence" if value_list is not None else "image",
        object_name=obj.name,
        object_type=obj.tag,
        value_key=raw_value[1:],
        controls=controls,
        output=output,
        output_labels=output.labels,
    )
