"""A backend that requires CurveZMQ keys (as one on another machine must), reached from Blender.

A real keyed backend subprocess bound to 127.0.0.1 (`serve --server-key ... --authorized-keys ...`)
and the built add-on in headless Blender (tests/blender_harness.py). The client key pair comes from the
preferences' Generate client keys button, and the server learns it from exactly the lines the
preferences show. Every request that could wait runs on the add-on's request thread, so the main
thread (these ticks) never waits on a key handshake: each case ends in a message, not a hang.
"""
from __future__ import annotations

import types

import pytest
import zmq

from shared.keys import generate_keys
from tests.blender_harness import (FAST, STEPS, Backend, FakeLayout, addon, addon_module, bpy, connect,  # noqa: F401
                                   draw_panel, labels, prefs, scene, tick_until)


@pytest.fixture(scope="module")
def client_keys(addon):
    """The pair the preferences' button makes, and the certificate lines the preferences show for the server."""
    p = prefs()
    p.client_public_key = p.client_secret_key = ""
    assert bpy.ops.distill3d.generate_keys() == {"FINISHED"}
    public, secret = p.client_public_key, p.client_secret_key
    assert len(public) == len(secret) == 40 and public != secret
    log: list = []
    addon_module("prefs").Distill3DPreferences.draw(
        types.SimpleNamespace(layout=FakeLayout(log), client_public_key=public), bpy.context)
    shown = [entry[1] for entry in log if entry[0] == "label"]
    hint = next(i for i, text in enumerate(shown) if "--authorized-keys" in text)
    certificate = "\n".join(shown[hint + 1:hint + 5]) + "\n"
    assert public in certificate
    p.client_public_key = p.client_secret_key = ""
    return public, secret, certificate


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, client_keys):
    folder = tmp_path_factory.mktemp("keyed")
    keys = generate_keys(folder / "keys")  # the server's pair (and a client pair the harness uses to wait for it)
    (keys["authorized"] / "blender.key").write_text(client_keys[2])  # what the user saves on the server
    server = Backend(folder, keys=keys)
    server.keys = keys
    yield server
    server.stop()


def server_public(keyed) -> str:
    return zmq.auth.load_certificate(keyed.keys["server_public"])[0].decode()


@pytest.mark.slow
def test_right_keys_connect_and_run_a_job(scene, keyed, client_keys):
    public, secret, _ = client_keys
    # The server's key given as its server.key file; the client pair from the button.
    session = connect(keyed.port, keys=(str(keyed.keys["server_public"]), public, secret))
    tick_until(lambda: session.backend == "ok", timeout_s=60)
    assert "Backend" in labels(draw_panel())
    assert bpy.ops.distill3d.generate(prompt="a red cube", preset="tiny", steps=STEPS, extra=FAST,
                                      wait=True) == {"FINISHED"}  # commands, events and the mesh, encrypted
    assert bpy.data.objects["a red cube"].type == "MESH"
    # The server's key pasted as the 40-character Z85 string works the same.
    session = connect(keyed.port, keys=(server_public(keyed), public, secret))
    tick_until(lambda: session.backend == "ok", timeout_s=60)


def test_wrong_client_keys_say_so_in_the_panel(scene, keyed):
    stranger = tuple(k.decode() for k in zmq.curve_keypair())  # valid keys the server was never told about
    session = connect(keyed.port, timeout_s=1.0, keys=(server_public(keyed), *stranger))
    tick_until(lambda: session.backend == "unreachable", timeout_s=30)
    text = labels(draw_panel())
    assert "rejected this client's keys" in text and "--authorized-keys" in text
    # Generate from the panel answers with the same message; a script asking to wait gets it raised.
    assert bpy.ops.distill3d.generate(prompt="a red cube") == {"FINISHED"}
    tick_until(lambda: session.last_error, timeout_s=30)
    assert "rejected this client's keys" in session.last_error
    with pytest.raises(RuntimeError, match="rejected this client's keys"):
        bpy.ops.distill3d.generate(prompt="a red cube", wait=True)


def test_missing_keys_point_to_the_preferences(scene, keyed):
    session = connect(keyed.port, timeout_s=1.0)  # no keys at all: the server never answers
    tick_until(lambda: session.backend == "unreachable", timeout_s=30)
    text = labels(draw_panel())
    assert f"tcp://127.0.0.1:{keyed.port}" in text and "--server-key" in text and "Preferences" in text


def test_wrong_server_key_says_so_in_the_panel(scene, keyed, client_keys):
    public, secret, _ = client_keys
    session = connect(keyed.port, timeout_s=1.0, keys=(zmq.curve_keypair()[0].decode(), public, secret))
    tick_until(lambda: session.backend == "unreachable", timeout_s=30)
    text = labels(draw_panel())
    assert f"tcp://127.0.0.1:{keyed.port}" in text and "rejected" in text and "server.key" in text


def test_keys_set_and_no_backend_suggests_checking_the_server_key(scene, client_keys):
    from shared.ports import free_port_pair

    public, secret, _ = client_keys
    port = free_port_pair()
    session = connect(port, timeout_s=0.5, keys=(zmq.curve_keypair()[0].decode(), public, secret))
    tick_until(lambda: session.backend == "unreachable", timeout_s=30)
    text = labels(draw_panel())
    assert f"tcp://127.0.0.1:{port}" in text and "server public key" in text


def test_unusable_keys_are_named(scene, keyed, client_keys):
    public, secret, _ = client_keys
    session = connect(keyed.port, timeout_s=1.0, keys=(server_public(keyed), "", ""))
    tick_until(lambda: session.backend == "error", timeout_s=30)
    text = labels(draw_panel())
    assert "client public key and the client secret key are empty" in text and "Generate client keys" in text
    session = connect(keyed.port, timeout_s=1.0, keys=("not-a-key", public, secret))
    tick_until(lambda: session.backend == "error", timeout_s=30)
    assert "not-a-key" in labels(draw_panel()) and "40-character" in labels(draw_panel())
