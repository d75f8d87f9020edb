"""Who may talk to the server: loopback only without keys; CurveZMQ keys (encryption plus authorized
client keys) for anything else; clients with wrong keys cannot connect, for commands or events."""
import time

import pytest
import zmq

from backend.errors import UserError
from backend.server import serve_from_args
from backend.server.security import ServerKeys, is_loopback
from backend.server.server import Server
from shared.client import Client, ClientError, ServerUnreachable
from shared.keys import generate_keys
from tests.server_fakes import collect, running_server, subscribe_and_settle


def test_only_loopback_addresses_count_as_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "*", "192.168.1.5", "::", "example.com", ""]))


def test_listening_beyond_loopback_without_keys_is_refused_with_the_fix(tmp_path, capsys):
    with pytest.raises(UserError, match="refusing to listen on 0.0.0.0 without encryption.*--server-key"):
        Server(tmp_path, host="0.0.0.0", port=0, device="cpu").start()
    keys = generate_keys(tmp_path / "keys")
    with pytest.raises(UserError, match="--authorized-keys"):  # encryption without client authentication
        Server(tmp_path, host="*", port=0, device="cpu", keys=ServerKeys.load(keys["server_secret"])).start()
    assert serve_from_args(["--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no client public keys"):
        ServerKeys.load(keys["server_secret"], empty)
    with pytest.raises(UserError, match="only a public key"):
        ServerKeys.load(keys["server_public"])


def test_generate_keys_writes_a_working_set(tmp_path, capsys):
    assert serve_from_args(["--generate-keys", str(tmp_path)]) == 0
    assert "--server-key" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} >= {"server.key", "server.key_secret", "client.key_secret",
                                                    "authorized"}


@pytest.fixture()
def secured(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    server_keys = ServerKeys.load(keys["server_secret"], keys["authorized"])
    with running_server(tmp_path / "data", keys=server_keys) as server:
        server.key_files = keys
        yield server


def test_clients_with_the_right_keys_get_commands_and_events(secured):
    keys = secured.key_files
    with Client(f"tcp://127.0.0.1:{secured.port}", timeout_s=10, server_public_key=keys["server_public"],
                client_keys=keys["client_secret"]) as client:
        subscribe_and_settle(client)
        job = client.submit({"prompt": "a cube", "preset": "tiny", "steps": 3})
        events = collect(client, lambda events: any(e["type"] == "result" for e in events))
        assert {e["job_id"] for e in events} == {job}


def test_clients_with_wrong_or_no_keys_cannot_connect(secured, tmp_path):
    keys = secured.key_files
    address = f"tcp://127.0.0.1:{secured.port}"
    stranger = zmq.curve_keypair()  # a valid key pair the server was never told about
    with Client(address, timeout_s=1.5, server_public_key=keys["server_public"], client_keys=stranger) as client:
        with pytest.raises(ServerUnreachable, match="rejected this client's keys"):
            client.info()
        client.subscribe()
    with Client(address, timeout_s=1.5, server_public_key=zmq.curve_keypair()[0],  # the wrong server
                client_keys=keys["client_secret"]) as client:
        with pytest.raises(ServerUnreachable):
            client.info()
    with Client(address, timeout_s=1.5) as plain:  # no encryption at all
        with pytest.raises(ServerUnreachable):
            plain.info()
        plain.subscribe()
        with Client(address, timeout_s=10, server_public_key=keys["server_public"],
                    client_keys=keys["client_secret"]) as friend:
            friend.submit({"prompt": "a cube", "preset": "tiny", "steps": 3})
            time.sleep(1.0)
        assert plain.poll_events() == []  # and no events leak to it
    with pytest.raises(ClientError, match="server_public_key"):
        Client(address, client_keys=keys["client_secret"])
