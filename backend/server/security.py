"""Who may talk to the server. Loopback needs nothing; any other address requires CurveZMQ: the
server's key pair (encryption) and a folder of authorized client public keys (authentication)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from shared.keys import BadKey, read_keypair

from ..errors import UserError


@dataclass
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: Path | None = None   # folder of client public keys; None: any client with the server key

    @classmethod
    def load(cls, server_key: str | Path, authorized: str | Path | None = None) -> "ServerKeys":
        try:
            public, secret = read_keypair(Path(server_key))
        except BadKey as error:
            raise UserError(f"--server-key: {error}") from None
        if authorized is not None:
            authorized = Path(authorized)
            if not authorized.is_dir() or not any(authorized.glob("*.key")):
                raise UserError(f"--authorized-keys {authorized} holds no client public keys (*.key): copy each "
                                "client's .key file there (--generate-keys DIR writes one in DIR/authorized)")
        return cls(public, secret, authorized)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or "*": it may reach other machines


def check_bind(host: str, keys: ServerKeys | None) -> None:
    """Refuse to listen beyond loopback without encryption and client authentication."""
    if not is_loopback(host) and (keys is None or keys.authorized is None):
        raise UserError(f"refusing to listen on {host} without encryption: anyone on the network could run jobs "
                        "and read results. Pass --server-key FILE and --authorized-keys DIR (create them with "
                        "--generate-keys DIR), or listen on --host 127.0.0.1")


def secure_socket(sock: zmq.Socket, keys: ServerKeys | None) -> None:
    if keys is not None:
        sock.curve_secretkey, sock.curve_publickey = keys.secret, keys.public
        sock.curve_server = True


def start_authenticator(context: zmq.Context, keys: ServerKeys | None) -> ThreadAuthenticator | None:
    """With an authorized folder, only its clients complete the CurveZMQ handshake."""
    if keys is None or keys.authorized is None:
        return None
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(keys.authorized))
    return authenticator
