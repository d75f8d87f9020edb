"""Where the backend is and which CurveZMQ keys reach it: plain data, no Blender.

A backend on another machine requires keys (shared/PROTOCOL.md): the server's public key, and a client
key pair whose public half the server lists in its --authorized-keys folder. Keys are entered in the
add-on preferences as 40-character Z85 strings (or, for the server's key, the path of its server.key
file); "Generate client keys" there makes a pair with `new_client_keys` and shows `certificate` for
the server.
"""
from __future__ import annotations

from dataclasses import dataclass

import zmq

from .shared.client import Client, ClientError


@dataclass(frozen=True)
class Keys:
    server_public: str = ""  # Z85 key or a server.key file
    client_public: str = ""
    client_secret: str = ""

    def __bool__(self) -> bool:
        return any(v.strip() for v in (self.server_public, self.client_public, self.client_secret))


NO_KEYS = Keys()


@dataclass(frozen=True)
class Connection:
    """Everything a session's sockets depend on: a change to any of it means new sockets."""
    address: str
    timeout_s: float
    keys: Keys = NO_KEYS


def connect(connection: Connection) -> Client:
    """A client for `connection`; ClientError (with what to set) when its keys are unusable."""
    keys = connection.keys
    if not keys:
        return Client(address=connection.address, timeout_s=connection.timeout_s)
    missing = [name for name, value in (("the server's public key", keys.server_public),
                                        ("the client public key", keys.client_public),
                                        ("the client secret key", keys.client_secret)) if not value.strip()]
    if missing:
        raise ClientError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} empty: in Preferences > "
                          "Add-ons > Distill3D set the server's public key and press Generate client keys (or clear "
                          "all three keys for a backend on this machine without keys)", "keys")
    return Client(address=connection.address, timeout_s=connection.timeout_s,
                  server_public_key=keys.server_public.strip(),
                  client_keys=(keys.client_public.strip(), keys.client_secret.strip()))


def new_client_keys() -> tuple[str, str]:
    """A fresh CurveZMQ key pair (public, secret) as Z85 strings."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def certificate(public_key: str) -> str:
    """The text of a public certificate file (the format of pyzmq's zmq.auth and --generate-keys):
    saved as <name>.key in the server's --authorized-keys folder, it lets this client in."""
    return ("#   ZeroMQ CURVE Public Certificate for a Distill3D Blender client\n"
            "metadata\n"
            "curve\n"
            f"    public-key = \"{public_key.strip()}\"\n")
