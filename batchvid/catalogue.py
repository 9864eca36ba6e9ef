"""The Seedance models CometAPI documents, as data.

Everything batchvid knows about a model (seconds range, resolutions, whether it
takes reference images, which WxH sizes are documented) lives here and only
here; the source is ``shared/api/cometapi-seedance.md``.  Validation, the
simulator and the runner ask this module instead of comparing model names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "API_DEFAULTS",
    "API_FIELDS",
    "DEFAULT_RESOLUTION",
    "DEFAULT_SECONDS",
    "DEFAULT_SIZE",
    "MODELS",
    "POLL_EVERY_S",
    "RATIOS",
    "RESOLUTIONS",
    "SIZE_PATTERN",
    "TYPICAL_RENDER_S",
    "ModelSpec",
    "documented_sizes",
    "get_model",
    "is_ratio",
    "normalised_size",
    "render_size",
    "short_name",
    "size_problem",
]

#: Ratio presets, in the docs' order.
RATIOS: Final = ("21:9", "16:9", "4:3", "1:1", "3:4", "9:16")
#: Every resolution any model accepts.
RESOLUTIONS: Final = ("480p", "720p", "1080p")
#: The docs' pattern for ``size``: a ratio preset or an exact WxH.
SIZE_PATTERN: Final = re.compile(r"^(16:9|4:3|1:1|3:4|9:16|21:9|[1-9]\d{2,3}x[1-9]\d{2,3})$")
#: The values the API uses when a create omits ``seconds``, ``size``, ``resolution``.
DEFAULT_SECONDS: Final = 5
DEFAULT_SIZE: Final = "16:9"
DEFAULT_RESOLUTION: Final = "720p"
API_DEFAULTS: Final = MappingProxyType(
    {"seconds": DEFAULT_SECONDS, "size": DEFAULT_SIZE, "resolution": DEFAULT_RESOLUTION}
)
#: The create fields.
API_FIELDS: Final = ("prompt", "model", "seconds", "size", "resolution", "input_reference")
#: The docs' suggested cadence for polling one task, in seconds ("every 10-20 s").
POLL_EVERY_S: Final = (10.0, 20.0)
#: The docs: "most jobs finish in 1-3 minutes, depending on model, duration and resolution".
TYPICAL_RENDER_S: Final = (60.0, 180.0)
#: The docs' global bound on ``seconds`` (each model narrows it).
GLOBAL_SECONDS: Final = (2, 15)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What one model accepts, straight from the docs' model table."""

    id: str
    tier: str
    min_seconds: int
    max_seconds: int
    resolutions: tuple[str, ...]
    image_to_video: bool
    #: Which column of the documented size table applies ("1.0" or "1.5+").
    size_family: str

    def accepts_seconds(self, seconds: int) -> bool:
        return self.min_seconds <= seconds <= self.max_seconds


_MODEL_LIST: Final = (
    ModelSpec("doubao-seedance-2-0", "2.0, highest quality", 4, 15, ("480p", "720p"), True, "1.5+"),
    ModelSpec(
        "doubao-seedance-2-0-fast", "2.0, fast previews", 4, 15, ("480p", "720p"), True, "1.5+"
    ),
    ModelSpec(
        "doubao-seedance-1-5-pro", "1.5 Pro", 4, 12, ("480p", "720p", "1080p"), False, "1.5+"
    ),
    ModelSpec("doubao-seedance-1-0-pro", "1.0 Pro", 2, 10, ("480p", "720p", "1080p"), False, "1.0"),
)
#: Model id -> spec, in the docs' order.
MODELS: Final = MappingProxyType({m.id: m for m in _MODEL_LIST})

# The documented WxH for each (resolution, ratio), per size family.
_SIZE_TABLE: Final = {
    # resolution, ratio: (Seedance 1.0 series, 1.5 Pro / 2.0 / 2.0 Fast)
    ("480p", "16:9"): ("864x480", "864x496"),
    ("480p", "4:3"): ("736x544", "752x560"),
    ("480p", "1:1"): ("640x640", "640x640"),
    ("480p", "3:4"): ("544x736", "560x752"),
    ("480p", "9:16"): ("480x864", "496x864"),
    ("480p", "21:9"): ("960x416", "992x432"),
    ("720p", "16:9"): ("1248x704", "1280x720"),
    ("720p", "4:3"): ("1120x832", "1112x834"),
    ("720p", "1:1"): ("960x960", "960x960"),
    ("720p", "3:4"): ("832x1120", "834x1112"),
    ("720p", "9:16"): ("704x1248", "720x1280"),
    ("720p", "21:9"): ("1504x640", "1470x630"),
    ("1080p", "16:9"): ("1920x1088", "1920x1080"),
    ("1080p", "4:3"): ("1664x1248", "1664x1248"),
    ("1080p", "1:1"): ("1440x1440", "1440x1440"),
    ("1080p", "3:4"): ("1248x1664", "1248x1664"),
    ("1080p", "9:16"): ("1088x1920", "1080x1920"),
    ("1080p", "21:9"): ("2176x928", "2206x946"),
}
_FAMILY_COLUMN: Final = {"1.0": 0, "1.5+": 1}


def short_name(model_id: str) -> str:
    """A model id without the vendor prefix the docs give every id: ``seedance-2-0-fast``."""
    return model_id.removeprefix("doubao-")


def get_model(model_id: str) -> ModelSpec | None:
    """The spec of ``model_id``, or ``None`` if the docs do not list it."""
    return MODELS.get(model_id)


def is_ratio(size: str) -> bool:
    return size in RATIOS


def documented_sizes(model_id: str, resolution: str) -> dict[str, str]:
    """The documented ``{ratio: "WxH"}`` render sizes of a model at a resolution.

    Empty when the model does not offer that resolution (2.0 Fast, for one, is
    not in the official 1080p table).
    """
    spec = MODELS.get(model_id)
    if spec is None or resolution not in spec.resolutions:
        return {}
    column = _FAMILY_COLUMN[spec.size_family]
    return {
        ratio: sizes[column] for (res, ratio), sizes in _SIZE_TABLE.items() if res == resolution
    }


def render_size(model_id: str, size: str, resolution: str) -> str:
    """The WxH a request renders at: a ratio's documented size, or the exact size asked."""
    if not is_ratio(size):
        return size
    return documented_sizes(model_id, resolution).get(size, size)


def normalised_size(model_id: str, size: str, resolution: str) -> str:
    """The WxH the API renders, as the docs describe it (the simulator renders this).

    - A ratio renders its documented size at the resolution, except that a
      ratio-only request to 1.5 Pro "renders the 720p row" whatever the
      resolution asked.
    - An exact WxH the docs list for the model and resolution renders as asked;
      any other "can normalize to another size": the documented size of the
      nearest aspect ratio (``doubao-seedance-2-0`` given ``1920x1080`` renders
      ``1280x720``).
    - A resolution the model does not offer renders its 720p row.
    """
    if is_ratio(size) and model_id == "doubao-seedance-1-5-pro":
        resolution = DEFAULT_RESOLUTION
    table = documented_sizes(model_id, resolution) or documented_sizes(model_id, DEFAULT_RESOLUTION)
    if not table:
        return render_size(model_id, size, resolution)
    if is_ratio(size):
        return table.get(size, size)
    if size in table.values():
        return size
    width, height = (int(n) for n in size.split("x"))
    asked = width / height

    def distance(wxh: str) -> float:
        w, h = (int(n) for n in wxh.split("x"))
        return abs(w / h - asked)

    return min(table.values(), key=distance)


def size_problem(model_id: str, size: str, resolution: str) -> tuple[str, str] | None:
    """Check ``size`` for a model at a resolution.

    Returns ``None`` when fine, ``("error", why)`` when the API will refuse it,
    or ``("warning", why)`` for an exact WxH the docs do not list for that
    model and resolution (it may be normalised to another size, or fail), and
    for a ratio that the docs say renders another resolution's row.
    """
    if not SIZE_PATTERN.match(size):
        return (
            "error",
            f"{size!r} is neither a ratio preset ({' '.join(RATIOS)}) nor an exact WxH "
            "such as 1280x720",
        )
    if is_ratio(size):
        exact = documented_sizes(model_id, resolution).get(size)
        rendered = normalised_size(model_id, size, resolution)
        if exact is None or rendered == exact:  # (a resolution not offered is its own error)
            return None
        return (
            "warning",
            f"{model_id} renders a ratio-only size at {DEFAULT_RESOLUTION} whatever the "
            f"resolution asked (the docs): {size} at {resolution} renders {rendered}; "
            f"ask for {exact} to get {resolution}",
        )
    table = documented_sizes(model_id, resolution)
    if size in table.values():
        return None
    listed = ", ".join(table.values()) or "none"
    return (
        "warning",
        f"{size} is not a documented {model_id} size at {resolution} "
        f"(documented: {listed}); the API may render another size or refuse it",
    )
