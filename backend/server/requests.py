"""A validated protocol request -> the GenerateConfig the server runs, with the server's own choices
(the device for "auto", live coarse meshes) filled in."""
from __future__ import annotations

import re
from typing import Any

from shared.protocol import DEFAULT_PRESET, REQUEST_FIELDS, ProtocolError

from ..config import GenerateConfig, with_preset
from ..devices import canonical_device, cuda_device_problem
from ..errors import UserError


def resolve_device(name: str, default: str) -> str:
    """"auto" -> the server's device; "cuda" -> "cuda:0", so one device has one name (one queue)."""
    return canonical_device(name, auto=default)


def default_device(requested: str = "auto") -> str:
    """The server's device (--device): for "auto" the first GPU if torch sees one, else the CPU."""
    if not re.fullmatch(REQUEST_FIELDS["device"].pattern, requested):
        raise UserError(f"--device {requested!r} is not a device: use auto, cpu, cuda or cuda:N")
    device = canonical_device(requested)
    problem = cuda_device_problem(device)
    if problem:
        raise UserError(problem)
    return device


def config_from_request(fields: dict[str, Any], device: str, coarse_mesh_every: int,
                        source_mesh: str | None = None) -> GenerateConfig:
    """`fields` (from shared.protocol.validate_request) -> a validated GenerateConfig. `source_mesh`:
    where the job's uploaded mesh is kept (uploads.py), never a request field. Raises ProtocolError
    naming the field GenerateConfig.validate complains about."""
    settings = dict(fields)
    if source_mesh is not None:
        settings["source_mesh"] = source_mesh
    preset = settings.pop("preset", DEFAULT_PRESET)
    settings.setdefault("coarse_mesh_every", coarse_mesh_every)  # live proxies unless the client says no
    settings["device"] = resolve_device(settings.get("device", "auto"), device)
    try:
        config = with_preset(preset, **settings).validate()
    except UserError as error:
        raise ProtocolError(str(error), error.field) from None
    check_device_exists(config.device)
    return config


def check_device_exists(device: str) -> None:
    """ProtocolError naming "device" unless torch has this device (asked before any model loads)."""
    problem = cuda_device_problem(device)
    if problem:
        raise ProtocolError(problem, "device")
