"""shared.protocol: the request schema agrees with GenerateConfig, validation names the bad field,
framing and versions, and the package imports without torch as a relocatable subpackage."""
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.config import GenerateConfig
from shared import protocol
from shared.keys import BadKey, generate_keys, read_keypair, read_public_key
from shared.protocol import (REQUEST_FIELDS, ProtocolError, decode_event, decode_header, event_address, pack,
                             validate_command, validate_request)

ROOT = Path(__file__).resolve().parents[1]


def test_a_local_path_setting_is_refused_on_the_wire_but_taken_by_a_local_run():
    with pytest.raises(ProtocolError) as error:
        validate_request({"prompt": "a cube", "source_mesh": "/etc/passwd"})
    assert error.value.field == "source_mesh" and "unknown setting" in error.value.message
    config = GenerateConfig(prompt="a cube", source="texture", source_mesh="cube.glb")
    assert config.source_mesh == "cube.glb"


@pytest.mark.parametrize("name", [n for n, s in REQUEST_FIELDS.items() if s.low is not None])
def test_every_value_the_protocol_accepts_at_its_range_ends_is_a_valid_config(name):
    spec = REQUEST_FIELDS[name]
    for value in (spec.low, spec.high):
        checked = validate_request({"prompt": "a cube", name: value})
        GenerateConfig(**{k: v for k, v in checked.items() if k != "preset"})
        with pytest.raises(ProtocolError) as error:  # and one step beyond is refused, naming the field
            validate_request({"prompt": "a cube", name: value + (-1 if value == spec.low else 1)})
        assert error.value.field == name and "out of range" in error.value.message


@pytest.mark.parametrize("request_, field, needle", [
    ({"prompt": "a cube", "steps": 2.5}, "steps", "whole number"),
    ({"prompt": "a cube", "steps": True}, "steps", "whole number"),
    ({"prompt": "a cube", "cfg": float("inf")}, "cfg", "must be a number"),
    ({"prompt": "a cube", "method": "dreamfusion"}, "method", "use one of 'sds'"),
    ({"prompt": "a cube", "preset": "ultra"}, "preset", "use one of 'tiny'"),
    ({"prompt": "a cube", "device": "tpu"}, "device", "not valid"),
    ({"prompt": "a cube", "view_dependent": 1}, "view_dependent", "true or false"),
    ({"prompt": "a cube", "seed": None}, "seed", "must not be null"),
    ({"prompt": "a cube", "stepz": 3}, "stepz", "unknown setting"),
    ({"prompt": "   "}, "prompt", "prompt is empty"),
    ({"prompt": "x" * 1001}, "prompt", "shorten it"),
    ({"steps": 3}, "prompt", "has no prompt"),
    ({"prompt": "a cube", "method_options": {"weighting": [1]}}, "method_options.weighting", "finite number"),
    ({"prompt": "a cube", "method_options": {"../x": 1}}, "method_options", "bad option name"),
    ("a cube", "request", "mapping"),
])
def test_a_bad_request_is_refused_naming_the_field_and_the_fix(request_, field, needle):
    with pytest.raises(ProtocolError) as error:
        validate_request(request_)
    assert error.value.field == field and needle in error.value.message and error.value.code == "bad_request"


def test_a_good_request_is_normalised_and_keeps_only_what_was_set():
    checked = validate_request({"prompt": "a red cube", "lr": 1, "cfg": None, "preset": "tiny",
                                "method_options": {"weighting": "uniform"}})
    assert checked == {"prompt": "a red cube", "lr": 1.0, "cfg": None, "preset": "tiny",
                       "method_options": {"weighting": "uniform"}}
    assert isinstance(checked["lr"], float)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                             children, max_size=4),
                           max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(REQUEST_FIELDS) + ["junk"]), json_values, max_size=6))
def test_validation_of_any_json_either_passes_or_raises_a_protocol_error(request_):
    try:
        checked = validate_request(request_)
    except ProtocolError as error:
        assert error.field and error.message
    else:
        assert set(checked) == set(request_)


def test_commands_check_their_arguments():
    assert validate_command({"v": 1, "id": 3, "cmd": "fetch", "job_id": "a-1", "name": "mesh.glb"}) == (
        "fetch", {"job_id": "a-1", "name": "mesh.glb"})
    assert validate_command({"v": 1, "cmd": "jobs"}) == ("jobs", {})
    for header, field in [({"cmd": "explode"}, "cmd"), ({"cmd": "status"}, "job_id"),
                          ({"cmd": "status", "job_id": "../etc"}, "job_id"),
                          ({"cmd": "fetch", "job_id": "a", "name": "../../x"}, "name"),
                          ({"cmd": "fetch", "job_id": "a", "name": ".hidden"}, "name"),
                          ({"cmd": "info", "force": True}, "force"), ({"cmd": "jobs", "limit": 0}, "limit"),
                          ({"cmd": "info", "id": -1}, "id")]:
        with pytest.raises(ProtocolError) as error:
            validate_command({"v": 1, **header})
        assert error.value.field == field


def test_headers_carry_the_version_and_a_mismatch_says_which_side_to_update():
    frames = pack({"cmd": "info"}, b"\x00\xff")
    assert json.loads(frames[0]) == {"v": protocol.PROTOCOL_VERSION, "cmd": "info"} and frames[1] == b"\x00\xff"
    assert decode_header(frames[0])["cmd"] == "info"
    newer = json.dumps({"v": protocol.PROTOCOL_VERSION + 1}).encode()
    with pytest.raises(ProtocolError, match="update the Distill3D backend") as error:
        decode_header(newer, sender="client")
    assert error.value.code == "version"
    with pytest.raises(ProtocolError, match="update the Blender add-on"):
        decode_header(newer, sender="server")
    for bad, field in [(b"\xff\xfe", "header"), (b"[1]", "header"), (b'{"v": NaN}', "header"),
                       (b'{"v": "1"}', "v"), (b"{}", "v"), (b"[" * 100_000, "header")]:
        with pytest.raises(ProtocolError) as error:
            decode_header(bad)
        assert error.value.field == field


def test_non_finite_numbers_go_out_as_null_so_the_json_stays_standard():
    assert json.loads(pack({"loss": float("nan"), "x": [float("inf"), 1.5]})[0]) == {
        "v": protocol.PROTOCOL_VERSION, "loss": None, "x": [None, 1.5]}


def test_events_decode_with_their_binary_frames_and_bad_ones_are_refused():
    topic = protocol.event_topic("job-1")
    header = pack({"type": "mesh", "job_id": "job-1", "step": 5, "vertex_count": 1, "face_count": 1})[0]
    event = decode_event([topic, header, b"\0" * 12, b"\1" * 12, b"\2" * 3])
    assert event["type"] == "mesh" and event["faces"] == b"\1" * 12 and event["colors"] == b"\2" * 3
    assert topic.startswith(protocol.event_topic(None)) and not protocol.event_topic("job-10").startswith(topic)
    with pytest.raises(ProtocolError):  # buffers that do not match the counts
        decode_event([topic, header, b"\0" * 11, b"\1" * 12, b"\2" * 3])
    with pytest.raises(ProtocolError):
        decode_event([topic, pack({"type": "boom", "job_id": "x"})[0]])
    with pytest.raises(ProtocolError):  # a preview without its PNG frame
        decode_event([topic, pack({"type": "preview", "job_id": "x", "step": 1})[0]])


def test_the_event_address_is_the_next_port():
    assert event_address("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5556"
    assert event_address("tcp://[::1]:7000") == "tcp://[::1]:7001"
    for bad in ("127.0.0.1:5555", "tcp://host", "tcp://host:65535", "ipc:///tmp/x"):
        with pytest.raises(ProtocolError):
            event_address(bad)


def test_protocol_md_shows_the_current_request_table():
    text = (ROOT / "shared" / "PROTOCOL.md").read_text()
    assert protocol.describe_request_fields() in text, "regenerate the table: python tools/write_protocol_md.py"


def test_shared_imports_without_torch_or_numpy_as_a_relocated_subpackage(tmp_path):
    # The add-on zip holds shared/ as <addon>/shared: only relative imports inside, and no torch/numpy.
    shutil.copytree(ROOT / "shared", tmp_path / "myaddon" / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "myaddon" / "__init__.py").write_text("")
    code = ("import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None; sys.modules['shared'] = None\n"
            "from myaddon.shared.client import Client, ClientError, ServerUnreachable, VersionMismatch\n"
            "from myaddon.shared import protocol, keys, schema, version\n"
            "assert issubclass(ServerUnreachable, ClientError) and issubclass(VersionMismatch, ClientError)\n"
            "print(version.__version__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"


def test_generated_keys_read_back_from_files_and_z85_strings(tmp_path):
    paths = generate_keys(tmp_path)
    public, secret = read_keypair(paths["server_secret"])
    assert read_public_key(paths["server_public"]) == public == read_public_key(public.decode())
    assert read_keypair((public, secret)) == (public, secret)
    assert (paths["authorized"] / "client.key").read_text() == paths["client_public"].read_text()
    assert paths["server_secret"].stat().st_mode & 0o077 == 0
    with pytest.raises(BadKey, match="only a public key"):
        read_keypair(paths["server_public"])
    with pytest.raises(BadKey, match="no key file"):
        read_public_key(tmp_path / "missing.key")
    with pytest.raises(BadKey, match="Z85"):
        read_keypair(("short", "pair"))


def test_a_mesh_packs_into_frames_that_decode_only_with_matching_lengths():
    import array

    vertices = array.array("f", [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # no numpy needed
    faces, uv = array.array("i", [0, 1, 2]), array.array("f", [0.0] * 6)
    header, frames = protocol.pack_mesh(vertices, faces, uv)
    assert header == {"vertex_count": 3, "face_count": 1, "corner_uv": True} and len(frames) == 3
    assert validate_command({"v": 2, "cmd": "submit", "request": {"prompt": "a", "source": "texture"},
                             "mesh": header})[1]["mesh"] == header
    decoded = protocol.decode_mesh(header, [bytes(f) for f in frames])
    assert decoded == {"vertices": bytes(vertices), "faces": bytes(faces), "corner_uv": bytes(uv)}
    no_uv, _ = protocol.pack_mesh(vertices, faces)
    assert no_uv["corner_uv"] is False
    for frames_, field in [([bytes(vertices), bytes(faces)], "mesh"),                  # the UV frame is missing
                           ([bytes(vertices)[:-4], bytes(faces), bytes(uv)], "vertices"),
                           ([bytes(vertices), bytes(faces) * 2, bytes(uv)], "faces")]:
        with pytest.raises(ProtocolError) as error:
            protocol.decode_mesh(header, frames_)
        assert error.value.field == field
    with pytest.raises(ProtocolError, match="no mesh argument"):
        protocol.decode_mesh(None, [b"x"])
    with pytest.raises(ProtocolError, match="UV layer has 2 corners but the mesh has 3"):
        protocol.pack_mesh(vertices, faces, array.array("f", [0.0] * 4))


@pytest.mark.parametrize("header, field, needle", [
    ({"request": {"prompt": "a", "source": "texture"}}, "mesh", "needs the mesh"),
    ({"request": {"prompt": "a"}, "mesh": {"vertex_count": 3, "face_count": 1, "corner_uv": False}}, "source",
     "source is \"new\""),
    ({"request": {"prompt": "a", "source": "shape"}, "mesh": {"vertex_count": 0, "face_count": 0, "corner_uv": False}},
     "mesh", "empty"),
    ({"request": {"prompt": "a", "source": "shape"},
      "mesh": {"vertex_count": 3, "face_count": protocol.MAX_MESH_FACES + 1, "corner_uv": False}}, "mesh", "1,000,000"),
    ({"request": {"prompt": "a", "source": "shape"}, "mesh": {"vertex_count": 3, "face_count": 1}}, "mesh",
     "corner_uv"),
])
def test_a_submit_and_its_mesh_must_agree_and_fit_the_caps(header, field, needle):
    with pytest.raises(ProtocolError) as error:
        validate_command({"v": protocol.PROTOCOL_VERSION, "cmd": "submit", **header})
    assert error.value.field == field and needle in error.value.message


def test_the_largest_mesh_frame_fits_under_the_hard_frame_limit():
    largest = max(protocol.MESH_ITEM_BYTES["corner_uv"] * protocol.MAX_MESH_FACES,
                  protocol.MESH_ITEM_BYTES["vertices"] * protocol.MAX_MESH_VERTICES)
    assert largest <= protocol.HARD_FRAME_LIMIT
