"""The REST door's bodies: images + fields, as JSON (base64 / data URI) or multipart.

Nothing here decodes an image: the raw payloads (bytes, or base64 text) go to the decode stage. The
body itself is read by `http_door.read_body`, and the limits are the engine's (`Limits`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from simpool_serve.service.engine import EngineError, Kind, Limits
from simpool_serve.service.engine.descriptor import Descriptor, View
from simpool_serve.service.http_door import read_body
from simpool_serve.service.refusals import unsupported_media
from simpool_serve.service.validation import describe

OnError = Literal["fail", "skip"]


class Fields(BaseModel):
    """Fields every image endpoint takes (JSON keys or multipart form fields)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    # An empty name is refused (422), not taken as "the default": `-F model=$UNSET` or `"model": ""` is
    # almost always a client bug, and answering it from another model would hide that.
    model: str | None = Field(
        None,
        min_length=1,
        description="Model name (see `GET /models`); omitted or null: the default model.",
    )
    on_error: OnError = Field(
        "fail",
        description="`fail`: one bad image fails the request (400/413 naming its index). "
        "`skip`: bad images get `null` and an entry in `errors`.",
    )


BoxField = Annotated[
    list[Annotated[float, Field(strict=False, allow_inf_nan=False)]], Field(min_length=4, max_length=4)
]


def _json_list(value: object) -> object:
    """A list sent as a form field is JSON text (`scales=[1, 0.7071]`)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value  # validation then says what is wrong
    return value


class ViewFields(BaseModel):
    """The view of the image a vector describes (docs/retrieval.md): `full` is the paper's retrieval
    protocol, the whole image at its aspect ratio; `region` cuts it to a box first."""

    view: View = Field("crop", description="`crop`: resize and centre crop (classification); `full`: "
                       "the whole image at its aspect ratio, longer side `size`.")  # fmt: skip
    size: int | None = Field(None, ge=32, description="Longer side of a `full` view; default: input_size.")
    region: BoxField | Literal["attention"] | None = Field(
        None,
        description="Cut to this box first (full view): [x0, y0, x1, y1] in the upright original's "
        "pixels, or `attention`, the box of the image's own SimPool attention.",
    )

    _lists = field_validator("region", mode="before")(_json_list)

    def descriptor(self) -> Descriptor:
        return Descriptor(view=self.view, size=self.size, region=self.region_value)

    @property
    def region_value(self) -> tuple[float, float, float, float] | Literal["attention"] | None:
        r = self.region
        return r if r is None or isinstance(r, str) else (r[0], r[1], r[2], r[3])


class EmbedFields(Fields, ViewFields):
    normalize: bool = Field(True, description="L2-normalise each embedding.")
    encoding: Literal["float", "base64"] = Field(
        "float", description="`float`: lists of numbers; `base64`: little-endian float32 bytes, base64."
    )
    scales: list[Annotated[float, Field(gt=0, le=1, strict=False)]] | None = Field(
        None, min_length=1, max_length=4, description="One descriptor per scale, averaged then L2-normalised "
        "(the paper's multi_scale is [1, 0.7071, 0.5]); default [1].",
    )  # fmt: skip
    whiten: bool = Field(False, description="Apply the model's fitted whitening (`simpool-whiten`).")
    dimensions: int | None = Field(None, ge=1, description="Keep this many whitened components (whitens).")

    _scales = field_validator("scales", mode="before")(_json_list)

    def descriptor(self) -> Descriptor:
        """The engine's descriptor; INVALID (422) with `normalize=false`: these answers are unit vectors."""
        d = Descriptor(
            view=self.view,
            size=self.size,
            scales=tuple(self.scales) if self.scales is not None else None,
            region=self.region_value,
            whiten=self.whiten,
            dimensions=self.dimensions,
        )
        if d.normalized_only and not self.normalize:
            raise _invalid("normalize=false: scales, region, whiten and dimensions answer unit vectors")
        return d


class AttentionFields(Fields, ViewFields):
    box_mass: float = Field(
        0.6,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Share of the attention's mass whose main connected region `boxes` outlines.",
    )


class ClassifyFields(Fields):
    view: Literal["crop"] = Field("crop", description="Classes come from the crop view only.")
    top_k: int = Field(5, ge=1, description="Classes per image, best first (at most the model's classes).")


_IMAGES_DOC = (
    "Encoded images (JPEG, PNG, WebP, BMP, GIF, TIFF), plain base64 or `data:image/...;base64,` URIs."
)


class EmbedJSON(EmbedFields):
    images: list[str] = Field(min_length=1, description=_IMAGES_DOC)


class AttentionJSON(AttentionFields):
    images: list[str] = Field(min_length=1, description=_IMAGES_DOC)


class ClassifyJSON(ClassifyFields):
    images: list[str] = Field(min_length=1, description=_IMAGES_DOC)


JSON_MODELS: dict[type[Fields], type[Fields]] = {
    EmbedFields: EmbedJSON,
    AttentionFields: AttentionJSON,
    ClassifyFields: ClassifyJSON,
}


@dataclass(slots=True)
class Parsed:
    """A parsed request: raw image payloads in order, and the validated fields."""

    images: list[bytes | str]
    fields: Fields


def _invalid(detail: str) -> EngineError:
    return EngineError(Kind.INVALID, detail, "malformed")


# Most parts other than images in one multipart body: the endpoints take a handful of fields, and
# python-multipart parses each part's headers byte by byte on the event loop (100 MB of tiny parts
# would stall every other request, probes included, for ~10 s).
MAX_FORM_FIELDS = 64


class _MultipartCollector:
    """Callbacks for python-multipart: file parts named `images` in order, other parts as text fields."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.images: list[bytes] = []
        self.fields: dict[str, str] = {}
        self.other_parts = 0
        self.finished = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._data: list[bytes] = []

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": lambda d, s, e: self._data.append(bytes(d[s:e])),
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers, self._data = {}, []

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _part_end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        data = b"".join(self._data)
        if name == "images":
            self.limits.check_images(len(self.images) + 1)
            self.images.append(data)
            return
        self.other_parts += 1
        if self.other_parts > MAX_FORM_FIELDS:
            raise _invalid(f"more than {MAX_FORM_FIELDS} multipart parts besides the images")
        if name and b"filename" not in options:
            self.fields[name] = data.decode("utf-8", "replace")

    def _end(self) -> None:
        self.finished = True


def parse_multipart(body: bytes, content_type: str, limits: Limits) -> tuple[list[bytes], dict[str, str]]:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise _invalid("multipart body without a boundary")
    collector = _MultipartCollector(limits)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except EngineError:
        raise
    except Exception as exc:
        raise _invalid(f"malformed multipart body: {exc}") from exc
    if not collector.finished:
        raise _invalid("malformed multipart body: it ends before its closing boundary")
    return collector.images, collector.fields


async def parse_request(
    request: Request, fields_type: type[Fields], limits: Limits, deadline: float | None = None
) -> Parsed:
    """Reads and validates an image request; raises `EngineError` (TOO_LARGE, INVALID, TIMEOUT) or a
    `Refusal` (unsupported media) on a bad one."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    is_json = media == "application/json" or media.endswith("+json")
    if not is_json and media != "multipart/form-data":
        raise unsupported_media(
            f"content type {media or '(none)'!r}: use application/json or multipart/form-data"
        )
    body = await read_body(request, limits, deadline)
    if is_json:
        # Strict: JSON has real booleans and integers, so `"top_k": true` or `"normalize": "yes"` is a
        # client bug to report (422), not a value to coerce. Form fields below are text and stay lax.
        try:
            parsed = JSON_MODELS[fields_type].model_validate_json(body, strict=True)
        except ValidationError as exc:
            raise _invalid(describe(exc)) from exc
        images: list[bytes | str] = list(parsed.images)  # type: ignore[attr-defined]
        limits.check_images(len(images))
        return Parsed(images, parsed)
    files, form = parse_multipart(body, content_type, limits)
    if not files:
        raise _invalid("no file part named 'images' in the multipart body")
    try:
        fields = fields_type.model_validate(form)  # lax: form values are strings ("5", "true")
    except ValidationError as exc:
        raise _invalid(describe(exc)) from exc
    return Parsed(list(files), fields)
