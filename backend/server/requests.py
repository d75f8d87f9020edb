"""A checked protocol request -> the GenerateConfig the server runs, built once where the request
crosses into the server: at submit, and for a stored request.json when the server restarts. The
server's own choices (the device for "auto", live coarse meshes) are filled in, then placed() adds
where the job's files are; the job carries that config to the runner, which never re-reads the
request (docs/design.md, section 1)."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared.protocol import DEFAULT_PRESET, REQUEST_FIELDS, ProtocolError

from ..config import GenerateConfig, with_preset
from ..devices import canonical_device, cuda_device_problem
from ..errors import UserError


def queue_device(name: str, default: str) -> str:
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
    """`fields` (from shared.protocol.validate_request) -> a GenerateConfig (valid by construction), as a
    client may see it. `source_mesh`: the name of the job's uploaded mesh in its folder (uploads.py),
    never a request field. Raises ProtocolError naming the field the config refuses."""
    settings = dict(fields)
    if source_mesh is not None:
        settings["source_mesh"] = source_mesh
    preset = settings.pop("preset", DEFAULT_PRESET)
    settings.setdefault("coarse_mesh_every", coarse_mesh_every)  # live proxies unless the client says no
    settings["device"] = queue_device(settings.get("device", "auto"), device)
    try:
        config = with_preset(preset, **settings)
    except UserError as error:
        raise ProtocolError(str(error), error.field) from None
    check_device_exists(config.device)
    return config


def check_device_exists(device: str) -> None:
    """ProtocolError naming "device" unless torch has this device (asked before any model loads)."""
    problem = cuda_device_problem(device)
    if problem:
        raise ProtocolError(problem, "device")


def placed(config: GenerateConfig, folder: Path, prior: str) -> GenerateConfig:
    """The config as the job runs it: `prior` as models.ModelRoots resolved it, and the uploaded mesh
    (if any) as its absolute path in the job's folder, since the runner works in an empty folder."""
    source_mesh = None if config.source_mesh is None else str(Path(folder) / config.source_mesh)
    return replace(config, prior=prior, source_mesh=source_mesh)
