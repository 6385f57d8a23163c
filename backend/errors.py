"""Exceptions -> HTTP status and message, in one place.

4xx: the caller's request or the task it names cannot be served (malformed body, unsupported label config,
prompts outside the frame, a frame beyond the video, media missing or not decodable). 5xx: the backend's
configuration (503) or an upstream failure (502: Label Studio or a media host unreachable or failing).
"""
from __future__ import annotations

from sam2_model.video.frames import VideoReadError
from sam2_model.video.session import SessionError

from .frametime import FrameTimeError
from .labelconfig import LabelConfigError
from .media import MediaError
from .prompts import PromptError


class BackendError(Exception):
    """An error with the HTTP status the backend answers."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def http_error(exc: BaseException) -> tuple[int, str] | None:
    """(status, message) for the exceptions that are answers rather than bugs; None for the others."""
    if isinstance(exc, (BackendError, MediaError)):
        return exc.status, str(exc)
    if isinstance(exc, LabelConfigError):
        return 422, f"unsupported label config: {exc}"
    if isinstance(exc, (PromptError, SessionError, FrameTimeError)):
        return 422, f"bad prompt: {exc}"
    if isinstance(exc, VideoReadError):
        return 422, f"media not decodable: {exc}"
    return None
