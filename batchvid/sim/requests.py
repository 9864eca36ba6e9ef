"""What the simulated CometAPI accepts and how it says no.

Plain functions over bytes and dicts: reading a multipart create (quoted
values from the docs' curl examples included), validating it the way
shared/api/cometapi-seedance.md describes (limits from
:mod:`batchvid.catalogue`), both error body shapes, and single byte ranges
for downloads.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..catalogue import API_DEFAULTS, GLOBAL_SECONDS, SIZE_PATTERN, get_model, short_name
from ..request import image_type

__all__ = [
    "CreateRequest",
    "SimError",
    "Upload",
    "error_body",
    "parse_multipart",
    "parse_range",
    "to_json",
    "validate_create",
]


@dataclass(frozen=True, slots=True)
class Upload:
    """One file part of a create."""

    filename: str
    content_type: str
    content: bytes = field(repr=False)


class SimError(Exception):
    """An error answer the simulator gives: status, code, type and message."""

    def __init__(
        self, status: int, code: str, message: str, type: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type


def _unquote(value: str) -> str:
    # The docs' curl examples send values quoted: -F 'model="doubao-seedance-2-0"'.
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list[Upload]]:
    """Text fields and file parts (in order) of a ``multipart/form-data`` body."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise SimError(400, "InvalidParameter", "Content-Type must be multipart/form-data")
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", errors="replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise SimError(400, "InvalidParameter", "the multipart body could not be read")
    fields: dict[str, str] = {}
    uploads: list[Upload] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        filename = part.get_filename()
        if filename is not None and name == "input_reference":
            uploads.append(Upload(filename, part.get_content_type(), payload))
        else:
            fields[name] = _unquote(payload.decode("utf-8", errors="replace"))
    return fields, uploads


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """A create that passed validation, with the API defaults filled in."""

    prompt: str
    model: str
    seconds: int
    size: str
    resolution: str
    references: tuple[Upload, ...]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for value in (self.prompt, self.model, str(self.seconds), self.size, self.resolution):
            digest.update(value.encode() + b"\x00")
        for upload in self.references:
            digest.update(hashlib.sha256(upload.content).digest())
        return digest.hexdigest()[:16]


def validate_create(fields: Mapping[str, str], uploads: Sequence[Upload]) -> CreateRequest:
    """The create the docs accept, or :class:`SimError` 400 saying why not."""
    prompt = fields.get("prompt", "")
    model_id = fields.get("model", "").strip()
    if not prompt.strip():
        raise SimError(400, "MissingParameter", "prompt is required and must not be empty")
    if not model_id:
        raise SimError(400, "MissingParameter", "model is required")
    spec = get_model(model_id)
    if spec is None:
        raise SimError(
            400, "InvalidParameter", f"the model {model_id} does not exist or is not supported"
        )
    seconds_text = fields.get("seconds", str(API_DEFAULTS["seconds"])).strip()
    low, high = max(spec.min_seconds, GLOBAL_SECONDS[0]), min(spec.max_seconds, GLOBAL_SECONDS[1])
    if not seconds_text.isdigit() or not low <= int(seconds_text) <= high:
        raise SimError(
            400,
            "InvalidParameter",
            f"the parameter duration specified in the request is not valid for model "
            f"{model_id}: got {seconds_text!r}, expected an integer from {low} to {high}",
        )
    size = fields.get("size", str(API_DEFAULTS["size"])).strip()
    if not SIZE_PATTERN.match(size):
        raise SimError(400, "InvalidParameter", f"the parameter size {size!r} is not valid")
    resolution = fields.get("resolution", str(API_DEFAULTS["resolution"])).strip()
    if resolution not in spec.resolutions:
        raise SimError(
            400,
            "InvalidParameter",
            f"the parameter resolution {resolution!r} is not supported by model {model_id} "
            f"(supported: {', '.join(spec.resolutions)})",
        )
    if uploads and not spec.image_to_video:
        short = short_name(model_id)
        raise SimError(
            400, "InvalidParameter", f"the specified task_type r2v does not support model {short}"
        )
    for index, upload in enumerate(uploads, start=1):
        if image_type(upload.content[:12]) is None:
            raise SimError(
                400,
                "InvalidParameter",
                f"input_reference {index} ({upload.filename}) is not a JPEG, PNG or WebP image",
            )
    return CreateRequest(prompt, model_id, int(seconds_text), size, resolution, tuple(uploads))


def error_body(shape: str, error: SimError) -> dict[str, Any]:
    """One error in the OpenAI-style or the flat shape."""
    if shape == "flat":
        return {"code": error.code, "message": error.message}
    return {"error": {"message": error.message, "type": error.type, "code": error.code}}


def parse_range(header: str | None, total: int) -> tuple[int, int] | Literal["bad"] | None:
    """``(first, last)`` of a single ``bytes=`` range; None = whole file; "bad" = 416."""
    if header is None or not header.strip().lower().startswith("bytes="):
        return None
    spec = header.strip()[6:].strip()
    if "," in spec or "-" not in spec:
        return None  # multiple or malformed ranges: serve the whole file, as servers may
    first_text, last_text = (part.strip() for part in spec.split("-", 1))
    if not first_text:
        if not last_text.isdigit() or int(last_text) == 0:
            return "bad"
        return max(0, total - int(last_text)), total - 1
    if not first_text.isdigit() or (last_text and not last_text.isdigit()):
        return None
    first = int(first_text)
    last = min(int(last_text), total - 1) if last_text else total - 1
    if first >= total or last < first:
        return "bad"
    return first, last


def to_json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
