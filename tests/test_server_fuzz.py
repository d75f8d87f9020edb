"""Fuzz the command socket with hypothesis: malformed frames, wrong types, huge values, wrong
versions. Every message gets a well-formed reply (an error naming the field, unless it happened to be
valid), and the server keeps serving."""
import json

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.client import Client
from shared.protocol import COMMANDS, HARD_FRAME_LIMIT, MAX_REQUEST_BYTES, MAX_REQUEST_FRAMES, PROTOCOL_VERSION, REQUEST_FIELDS
from tests.server_fakes import instant_train, running_server

ERROR_CODES = {"bad_request", "version", "not_found", "too_large", "unavailable", "internal"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Jobs a fuzzed submit happens to get right finish at once.
    with running_server(tmp_path_factory.mktemp("fuzz"), train_fn=instant_train) as server:
        yield server


@pytest.fixture(scope="module")
def raw(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{server.port}")
    yield sock
    sock.close()


def roundtrip(sock, frames, delimiter=True):
    sock.send_multipart([b""] + frames if delimiter else frames)
    assert sock.poll(10_000), "no reply: the server is stuck or dead"
    reply = sock.recv_multipart()
    if delimiter:
        assert reply[0] == b""
        reply = reply[1:]
    header = json.loads(reply[0])
    assert header["v"] == PROTOCOL_VERSION and isinstance(header["ok"], bool)
    if not header["ok"]:
        error = header["error"]
        assert error["code"] in ERROR_CODES - {"internal"} and isinstance(error["message"], str) and error["message"]
        assert error["field"] is None or isinstance(error["field"], str)
    return header


json_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                | st.floats(allow_nan=False) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=10)
requests = st.dictionaries(st.sampled_from(list(REQUEST_FIELDS) + ["junk", ""]), json_values, max_size=5)
headers = st.fixed_dictionaries(
    {"v": st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION + 1, 0, -1, 2**64, "1", None, 1.0, True]),
     "cmd": st.sampled_from(list(COMMANDS) + ["", "shutdown", "__init__", "_answer"]) | json_values},
    optional={"id": json_values, "job_id": json_values | st.sampled_from(["../x", "a" * 65, "ok-id"]),
              "name": json_values | st.sampled_from(["../../etc/passwd", "mesh.glb", "preview.png", ".."]),
              "request": requests | json_values, "limit": json_values, "extra": json_values})


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers, extra_frames=st.lists(st.binary(max_size=64), max_size=4))
def test_any_header_gets_a_well_formed_reply(raw, header, extra_frames):
    reply = roundtrip(raw, [json.dumps(header).encode(), *extra_frames])
    wrong_version = header.get("v") != PROTOCOL_VERSION or isinstance(header.get("v"), bool)
    if wrong_version and 1 + len(extra_frames) <= MAX_REQUEST_FRAMES:
        assert not reply["ok"] and reply["error"]["field"] in ("v", "header")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=6), delimiter=st.booleans())
def test_any_frames_get_a_well_formed_reply(raw, frames, delimiter):
    if not delimiter and frames[0] == b"":
        frames = [b"x"] + frames
    assert not roundtrip(raw, frames, delimiter)["ok"] or frames[0].startswith(b"{")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_as_a_header_gets_a_well_formed_reply(raw, text):
    roundtrip(raw, [text.encode("utf-8", "surrogatepass")])


def test_oversized_messages_are_refused_and_the_server_keeps_serving(server, raw):
    big = json.dumps({"v": PROTOCOL_VERSION, "cmd": "info", "pad": "x" * MAX_REQUEST_BYTES}).encode()
    assert roundtrip(raw, [big])["error"]["code"] == "too_large"
    assert roundtrip(raw, [b"{}"] * 50)["error"]["code"] == "too_large"
    deep = b"[" * 200_000 + b"]" * 200_000
    assert roundtrip(raw, [deep])["error"]["field"] == "header"
    huge = zmq.Context.instance().socket(zmq.DEALER)  # past the hard limit ZeroMQ drops the peer
    huge.linger = 0
    huge.connect(f"tcp://127.0.0.1:{server.port}")
    huge.send_multipart([b"", b"x" * (HARD_FRAME_LIMIT + 1)])
    assert huge.poll(1000) == 0
    huge.close()
    with Client(f"tcp://127.0.0.1:{server.port}", timeout_s=10) as client:
        assert client.info()["protocol"] == PROTOCOL_VERSION
        with pytest.raises(Exception) as error:
            client.submit({"prompt": "a cube", "steps": 10**30})
        assert error.value.field == "steps"
