"""The wire protocol between clients (Blender add-on, scripts) and the backend server.

Every message is a ZeroMQ multipart message: one JSON header frame, then zero or more raw binary
frames (PNG bytes, mesh buffers, result files). Nothing is ever pickled. Every header carries the
protocol version "v". shared/PROTOCOL.md describes the messages; this module is the single source of
truth for the job request fields (REQUEST_FIELDS), the commands and their arguments, the size
limits, and the validation both sides use. The methods, their options and the presets a request
names are shared/schema.py's.

This package must import without torch or numpy (Blender loads it) and uses relative imports only
(the add-on build copies it into the add-on as a subpackage).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from .schema import (DEFAULT_METHOD, DEFAULT_PRESET, MAX_OPTIONS, PRESETS, RUN_FIELDS, Field, SettingError,
                     check_method_options, check_value, show, show_number)
from .version import PROTOCOL_VERSION, __version__

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5555                # commands; events are published on DEFAULT_PORT + 1
DEFAULT_TIMEOUT_S = 5.0           # how long a client waits for a reply before it calls the backend unreachable

# Size limits. A request's header carries settings only, so 1 MiB is generous; a larger one gets an
# error reply. The only binary frames a request may carry are a submit's mesh (below). Beyond
# HARD_FRAME_LIMIT ZeroMQ itself drops the connection before the frame is buffered: it must hold the
# largest mesh frame (the corner UVs of MAX_MESH_FACES triangles, 24 MB).
MAX_REQUEST_BYTES = 1 << 20
MAX_REQUEST_FRAMES = 4             # the header and a mesh's three buffers
HARD_FRAME_LIMIT = 32 << 20
MAX_REPLY_BYTES = 512 << 20        # the largest result file a client accepts (a 8192^2 texture fits)
MAX_HEADER_BYTES = 1 << 20

# A job's states, declared once: the server, its job runner and the clients import these names.
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
JOB_STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
ACTIVE_STATES = (QUEUED, RUNNING)  # the job may still change: a client keeps following it
FINAL_STATES = (DONE, FAILED, CANCELLED)
EVENT_TYPES = ("state", "progress", "preview", "mesh", "log", "result")
PREVIEW_NAME = "preview.png"       # the latest preview of a job, for clients that join late

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
FILE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


class ProtocolError(SettingError):
    """A message that cannot be accepted. `field` names the offending field (None when the whole
    message is at fault); `code` is one of bad_request, version, not_found, too_large, unavailable (the
    backend cannot take it now: its queue or data folder is full), internal."""

    def __init__(self, message: str, field: str | None = None, code: str = "bad_request"):
        super().__init__(message, field)
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "field": self.field, "message": self.message}


# ------------------------------------------------------------------------------------------------
# The job request: a preset plus the run settings of shared/schema.py RUN_FIELDS that travel on the wire.
# A request that leaves a field out gets the value of its preset (shared/schema.py PRESETS), then the
# field's default.

REQUEST_FIELDS: dict[str, Field] = {
    "preset": Field("str", DEFAULT_PRESET, choices=tuple(PRESETS), help="quality preset; other fields override it"),
    **{name: spec for name, spec in RUN_FIELDS.items() if spec.wire},
}

def validate_request(request: Any, fields: dict[str, Field] = REQUEST_FIELDS) -> dict[str, Any]:
    """A job request checked against `fields` (the wire's REQUEST_FIELDS, or shared/schema.py RUN_FIELDS
    for a local run): the fields it sets, normalised. Raises ProtocolError naming the first bad field."""
    if not isinstance(request, dict):
        raise ProtocolError("request must be a mapping of setting name to value", "request")
    unknown = sorted(str(key) for key in request if key not in fields)
    if unknown:
        raise ProtocolError(f"unknown setting {show(unknown[0])}: known settings are "
                            f"{', '.join(fields)}", unknown[0])
    for name, spec in fields.items():
        if spec.required and name not in request:
            raise ProtocolError(f"the request has no {name}: give one, e.g. \"a red cube\"", name)
    try:  # each value against its Field, by the schema's one check_value
        checked = {name: check_value(name, fields[name], value) for name, value in request.items()}
        if checked.get("method_options"):  # the method's own names, types and ranges (shared/schema.py)
            checked["method_options"] = check_method_options(checked.get("method", DEFAULT_METHOD),
                                                             checked["method_options"])
    except SettingError as error:
        raise ProtocolError(error.message, error.field) from None
    return checked


def describe_request_fields() -> str:
    """REQUEST_FIELDS as a Markdown table (shared/PROTOCOL.md embeds it; a test keeps them equal)."""
    rows = ["| field | type | allowed | default | notes |", "|---|---|---|---|---|"]
    for name, spec in REQUEST_FIELDS.items():
        kind = spec.kind + (" or null" if spec.nullable else "")
        if spec.choices:
            allowed = ", ".join(spec.choices)
        elif spec.low is not None:
            allowed = f"{show_number(spec.low)} .. {show_number(spec.high)}"
        elif spec.pattern and spec.kind == "str" and "|" in spec.pattern:
            allowed = "`" + spec.pattern.replace("|", "\\|") + "`"
        elif spec.kind == "str":
            allowed = f"up to {spec.max_length} characters"
        elif spec.kind == "options":
            allowed = f"up to {MAX_OPTIONS} name: scalar pairs"
        else:
            allowed = "true, false"
        default = "required" if spec.required else json.dumps(spec.default)
        rows.append(f"| {name} | {kind} | {allowed} | {default} | {spec.help} |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------------------
# Commands: name -> argument name -> (checker, required). The request header is
# {"v": 1, "id": <int>, "cmd": <name>, <arguments>...}.

def _job_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not JOB_ID_PATTERN.fullmatch(value):
        raise ProtocolError(f"{name} must be a job id (letters, digits, - and _), got {show(value)}", name)
    return value


def _file_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not FILE_NAME_PATTERN.fullmatch(value):
        raise ProtocolError(f"{name} must be a result file name such as mesh.glb, got {show(value)}", name)
    return value


def _limit(name: str, value: Any) -> int:
    try:
        return check_value(name, Field("int", 100, 1, 10_000), value)
    except SettingError as error:
        raise ProtocolError(error.message, error.field) from None


def _request(name: str, value: Any) -> dict[str, Any]:
    return validate_request(value)


# ------------------------------------------------------------------------------------------------
# A mesh sent with submit (source "texture" or "shape"; shared/PROTOCOL.md "Sending a mesh"). The
# header's "mesh" argument gives the counts; the binary frames follow the header in MESH_FRAMES order,
# little-endian: vertices float32 [V, 3] in glTF's frame (+Y up, docs/frames.md), faces int32 [F, 3]
# (triangles, counter-clockwise seen from outside), and, when "corner_uv" is true, float32 [3F, 2]
# glTF texture coordinates (v down from the image's top row) for each corner of each triangle in
# order. Only the lengths are checked here (no numpy in shared/); the backend checks the values.

MAX_MESH_FACES = 1_000_000
MAX_MESH_VERTICES = 2_000_000
MESH_FRAMES = ("vertices", "faces", "corner_uv")
MESH_ITEM_BYTES = {"vertices": 12, "faces": 12, "corner_uv": 24}  # per vertex, per face, per face
MAX_MESH_BYTES = 12 * MAX_MESH_VERTICES + 36 * MAX_MESH_FACES
_MESH_KEYS = ("vertex_count", "face_count", "corner_uv")
_FIX_SIZE = "decimate it (a Decimate modifier) or send a lower-poly version"


def _mesh(name: str, value: Any) -> dict[str, Any]:
    """The "mesh" argument of submit: {"vertex_count": V, "face_count": F, "corner_uv": bool}."""
    if not isinstance(value, dict) or sorted(value) != sorted(_MESH_KEYS):
        raise ProtocolError(f"{name} must be {{\"vertex_count\": V, \"face_count\": F, \"corner_uv\": true|false}}, "
                            f"got {show(value)}", name)
    counts = [value["vertex_count"], value["face_count"]]
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts) \
            or not isinstance(value["corner_uv"], bool):
        raise ProtocolError(f"{name} counts must be whole numbers and corner_uv true or false, got {show(value)}", name)
    if not all(counts):
        raise ProtocolError("the mesh is empty (no vertices or no faces): select an object with faces", name)
    if value["face_count"] > MAX_MESH_FACES:
        raise ProtocolError(f"the mesh has {value['face_count']:,} triangles, more than the {MAX_MESH_FACES:,} "
                            f"the backend takes: {_FIX_SIZE}", name, "too_large")
    if value["vertex_count"] > MAX_MESH_VERTICES:
        raise ProtocolError(f"the mesh has {value['vertex_count']:,} vertices, more than the {MAX_MESH_VERTICES:,} "
                            f"the backend takes: merge by distance, {_FIX_SIZE}", name, "too_large")
    return dict(value)


def _check_submit(args: dict[str, Any]) -> None:
    """A source other than "new" needs a mesh, and a mesh needs such a source."""
    source = args["request"].get("source", REQUEST_FIELDS["source"].default)
    if source != "new" and "mesh" not in args:
        raise ProtocolError(f"source \"{source}\" needs the mesh it starts from, and the submit carries none: send "
                            "it with the request (Client.submit(request, mesh=...)), or use source \"new\"", "mesh")
    if source == "new" and "mesh" in args:
        raise ProtocolError("the submit carries a mesh but its source is \"new\": set source to \"texture\" or "
                            "\"shape\", or send no mesh", "source")


def _byte_length(buffer: Any, name: str) -> int:
    try:
        return memoryview(buffer).nbytes
    except TypeError:
        raise ProtocolError(f"mesh {name} must be a bytes-like buffer (bytes, array.array, a numpy array), "
                            f"got {type(buffer).__name__}", name) from None


def pack_mesh(vertices: Any, faces: Any, corner_uv: Any = None) -> tuple[dict[str, Any], list[Any]]:
    """(submit's "mesh" argument, its binary frames) from little-endian buffers in the layout above;
    ProtocolError when a buffer's length does not fit the layout or a cap."""
    sizes = {"vertices": _byte_length(vertices, "vertices"), "faces": _byte_length(faces, "faces")}
    if corner_uv is not None:
        sizes["corner_uv"] = _byte_length(corner_uv, "corner_uv")
    for name in ("vertices", "faces"):
        if sizes[name] % MESH_ITEM_BYTES[name]:
            raise ProtocolError(f"mesh {name} must be 3 x 4-byte numbers per item, got {sizes[name]} bytes", name)
    header = {"vertex_count": sizes["vertices"] // 12, "face_count": sizes["faces"] // 12,
              "corner_uv": corner_uv is not None}
    _mesh("mesh", header)
    if corner_uv is not None and sizes["corner_uv"] != 24 * header["face_count"]:
        raise ProtocolError(f"the UV layer has {sizes['corner_uv'] // 8} corners but the mesh has "
                            f"{3 * header['face_count']} triangle corners: send one UV per corner", "corner_uv")
    frames = [vertices, faces] + ([corner_uv] if corner_uv is not None else [])
    return header, frames


def decode_mesh(mesh: dict[str, Any] | None, frames: list[bytes]) -> dict[str, bytes] | None:
    """The binary frames of a submit whose "mesh" argument (already checked) is `mesh`: name -> bytes,
    each of the length its count says; None for a submit without a mesh (which must carry no frames)."""
    if mesh is None:
        if frames:
            raise ProtocolError(f"the submit carries {len(frames)} binary frames but no mesh argument: binary "
                                "frames are a mesh's buffers, announced by \"mesh\"", "mesh")
        return None
    names = MESH_FRAMES if mesh["corner_uv"] else MESH_FRAMES[:2]
    if len(frames) != len(names):
        raise ProtocolError(f"the mesh argument announces {len(names)} binary frames ({', '.join(names)}), the "
                            f"submit carries {len(frames)}", "mesh")
    counts = {"vertices": mesh["vertex_count"], "faces": mesh["face_count"], "corner_uv": mesh["face_count"]}
    decoded = {}
    for name, frame in zip(names, frames):
        expected = counts[name] * MESH_ITEM_BYTES[name]
        if len(frame) != expected:
            raise ProtocolError(f"the mesh's {name} frame is {len(frame)} bytes but its counts make {expected}: "
                                "send little-endian float32 vertices [V,3], int32 faces [F,3] and float32 corner "
                                "UVs [3F,2]", name)
        decoded[name] = bytes(frame)
    return decoded


COMMANDS: dict[str, dict[str, tuple[Any, bool]]] = {
    "info": {},
    "submit": {"request": (_request, True), "mesh": (_mesh, False)},
    "cancel": {"job_id": (_job_id, True)},
    "status": {"job_id": (_job_id, True)},
    "jobs": {"limit": (_limit, False)},
    "fetch": {"job_id": (_job_id, True), "name": (_file_name, True)},
}
_ENVELOPE = ("v", "id", "cmd")


def validate_command(header: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(command name, checked arguments) of a request header whose version was already checked."""
    cmd = header.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ProtocolError(f"cmd must be one of {', '.join(COMMANDS)}, got {show(cmd)}", "cmd")
    request_id = header.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, int)
                                   or not 0 <= request_id < 2**63):
        raise ProtocolError(f"id must be a whole number from 0 to 2^63-1, got {show(request_id)}", "id")
    spec = COMMANDS[cmd]
    extra = sorted(str(key) for key in header if key not in spec and key not in _ENVELOPE)
    if extra:
        raise ProtocolError(f"{cmd} takes no argument {show(extra[0])}: its arguments are "
                            f"{', '.join(spec) or 'none'}", extra[0])
    args = {}
    for name, (check, required) in spec.items():
        if name in header:
            args[name] = check(name, header[name])
        elif required:
            raise ProtocolError(f"{cmd} needs the argument {name}", name)
    if cmd == "submit":
        _check_submit(args)
    return cmd, args


# ------------------------------------------------------------------------------------------------
# Framing

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats replaced by None, so the JSON stays standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(json_safe({"v": PROTOCOL_VERSION, **header}), allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def pack(header: dict[str, Any], *frames: bytes) -> list[bytes]:
    """A message: the JSON header (with "v" added) followed by raw binary frames."""
    return [encode_header(header), *frames]


def parse_header(frame: bytes) -> dict[str, Any]:
    """A header frame as a dict, without the version check (the server reads "id" first, so even a
    version error reply can be matched to its request)."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"the header is {len(frame)} bytes: the limit is {MAX_HEADER_BYTES}", None, "too_large")
    try:
        header = json.loads(bytes(frame).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProtocolError(f"the header is not UTF-8 JSON ({show(str(error))}): send a JSON object "
                            "as the first frame", "header") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header must be a JSON object", "header")
    return header


def decode_header(frame: bytes, sender: str = "client") -> dict[str, Any]:
    """Parse a header frame and check its version. `sender` ("client" or "server") is the side
    that wrote it, so a version error can say which side to update."""
    header = parse_header(frame)
    check_version(header.get("v"), sender)
    return header


def check_version(version: Any, sender: str) -> None:
    """ProtocolError(code="version") unless `version` is ours, saying which side is older."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise ProtocolError(f"v must be the protocol version number ({PROTOCOL_VERSION}), got {show(version)}", "v")
    if version == PROTOCOL_VERSION:
        return
    me = "server" if sender == "client" else "client"
    older = sender if version < PROTOCOL_VERSION else me
    what = {"client": "the Blender add-on (or client script)", "server": "the Distill3D backend"}[older]
    raise ProtocolError(f"the {sender} speaks protocol {version} but the {me} speaks protocol {PROTOCOL_VERSION}: "
                        f"update {what} to the same Distill3D version ({__version__} here)", "v", "version")


def split_reply_envelope(frames: list[bytes]) -> list[bytes]:
    """Drop the empty delimiter frame a ROUTER puts before the header (REQ-compatible framing)."""
    return frames[1:] if frames and frames[0] == b"" else frames


# ------------------------------------------------------------------------------------------------
# Events on the PUB socket: [topic, header, *binary]. The topic makes per-job subscriptions cheap.

def event_topic(job_id: str | None) -> bytes:
    """The subscription prefix: one job's events, or everything for None."""
    return b"" if job_id is None else f"job/{job_id}/".encode()


# Binary frames of each event type, in order. Mesh buffers are little-endian: vertices float32 [V, 3]
# (glTF's frame: +Y up, front +Z; docs/frames.md), faces int32 [F, 3], colors uint8 RGB [V, 3].
EVENT_FRAMES = {"preview": ("png",), "mesh": ("vertices", "faces", "colors")}


def decode_event(frames: list[bytes]) -> dict[str, Any]:
    """An event dict from a PUB message; ProtocolError if it is malformed."""
    if len(frames) < 2:
        raise ProtocolError("an event needs a topic and a header frame", "frames")
    event = decode_header(frames[1], sender="server")
    kind = event.get("type")
    if kind not in EVENT_TYPES or not isinstance(event.get("job_id"), str):
        raise ProtocolError(f"unknown event type {show(kind)}", "type")
    names = EVENT_FRAMES.get(kind, ())
    if len(frames) != 2 + len(names):
        raise ProtocolError(f"a {kind} event has {len(names)} binary frames, got {len(frames) - 2}", "frames")
    event.update({name: bytes(frame) for name, frame in zip(names, frames[2:])})
    if kind == "mesh":
        v, f = event.get("vertex_count"), event.get("face_count")
        if not (isinstance(v, int) and isinstance(f, int) and len(event["vertices"]) == 12 * v
                and len(event["faces"]) == 12 * f and len(event["colors"]) == 3 * v):
            raise ProtocolError("a mesh event's buffers do not match its vertex and face counts", "mesh")
    return event


def event_address(address: str) -> str:
    """The event stream's address: the command address with the port plus one."""
    match = re.fullmatch(r"(tcp://.+):([0-9]{1,5})", address)
    if not match or not 0 < int(match.group(2)) < 65535:
        raise ProtocolError(f"address {show(address)} is not tcp://HOST:PORT: use e.g. "
                            f"tcp://{DEFAULT_HOST}:{DEFAULT_PORT}", "address")
    return f"{match.group(1)}:{int(match.group(2)) + 1}"
