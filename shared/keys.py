"""CurveZMQ keys: create a set, and read a key given as a Z85 string or as a certificate file.

Binding the backend to anything but loopback requires CurveZMQ: the server has a key pair, clients
know its public key, and the server accepts only clients whose public keys lie in its authorized
folder. `python -m backend serve --generate-keys DIR` writes a matching set (see shared/PROTOCOL.md).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

import zmq
import zmq.auth
from zmq.utils import z85

KeyValue = Union[str, bytes, os.PathLike]
Z85_KEY_LENGTH = 40


class BadKey(ValueError):
    """A key that cannot be used; the message says what to pass instead."""


def generate_keys(folder: str | os.PathLike) -> dict[str, Path]:
    """Write server.key (public, give to clients), server.key_secret (the server's), client.key_secret
    (a client's) and authorized/client.key (the server's list of allowed clients) into `folder`."""
    folder = Path(folder)
    authorized = folder / "authorized"
    authorized.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(folder, name)
        os.chmod(secret, 0o600)  # a secret key readable by others is no secret
        paths[f"{name}_public"], paths[f"{name}_secret"] = Path(public), Path(secret)
    paths["authorized"] = authorized
    shutil.copy(paths["client_public"], authorized / "client.key")
    return paths


def _as_z85(value: KeyValue) -> bytes | None:
    """The key itself if `value` is a 40-character Z85 string, else None (it may be a path)."""
    if isinstance(value, (str, bytes)):
        raw = value.encode("ascii", "replace") if isinstance(value, str) else value
        if len(raw) == Z85_KEY_LENGTH and not Path(os.fsdecode(raw)).is_file():
            try:
                z85.decode(raw)
                return raw
            except (ValueError, KeyError, TypeError):
                return None
    return None


def read_public_key(value: KeyValue) -> bytes:
    """A public key from a Z85 string or a certificate file (server.key or server.key_secret)."""
    key = _as_z85(value)
    if key is not None:
        return key
    return _load(value)[0]


def read_keypair(value: KeyValue | tuple[KeyValue, KeyValue]) -> tuple[bytes, bytes]:
    """(public, secret) from a pair of Z85 strings or from a secret certificate file (*.key_secret)."""
    if isinstance(value, tuple):
        if len(value) == 2 and all(_as_z85(v) is not None for v in value):
            return _as_z85(value[0]), _as_z85(value[1])
        raise BadKey("a key pair must be two 40-character Z85 strings (public, secret): "
                        "create one with zmq.curve_keypair() or --generate-keys")
    public, secret = _load(value)
    if secret is None:
        raise BadKey(f"{value} holds only a public key: pass the matching .key_secret file")
    return public, secret


def _load(path: KeyValue) -> tuple[bytes, bytes | None]:
    path = Path(os.fsdecode(path))
    if not path.is_file():
        raise BadKey(f"no key file at {path}: pass a 40-character Z85 key or the path of a key "
                        "file written by --generate-keys")
    try:
        return zmq.auth.load_certificate(path)
    except (ValueError, OSError) as error:
        raise BadKey(f"{path} is not a CurveZMQ certificate ({error}): use a file written by "
                        "--generate-keys") from None
