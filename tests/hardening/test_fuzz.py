"""Fuzzing every decoder of outside input and every gRPC handler (hypothesis).

Corpus: the messages of real rounds (sealagg_testkit/transcript.py), a real model file, a
real client kit and a real sealagg.toml, mutated byte-wise (flip, truncate, insert, splice)
and structure-wise (one field replaced by an arbitrary value). Asserted for each input: the
only exception is the decoder's documented error type (no crash), every call returns within
its timeout (no hang), declared sizes are refused before allocation (tracemalloc peak), and
every gRPC refusal carries a specific status code and a message (never UNKNOWN/INTERNAL from a
handler). tests/crypto/test_messages.py already fuzzes crypto.messages.decode with random
bytes; here the inputs start from real transcripts.

CI runs a bounded smoke (SEALAGG_FUZZ_EXAMPLES, default 60 per target). Longer run:

    SEALAGG_FUZZ_EXAMPLES=5000 .venv/bin/pytest -q tests/hardening/test_fuzz*.py
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tarfile
import tracemalloc

import msgpack
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as save_safetensors
from sealagg_testkit.transcript import corpus

from sealagg.appliance.cli._common import CLIError
from sealagg.appliance.cli.models import _load_float_tensors
from sealagg.appliance.config import load_config, parse_config
from sealagg.appliance.errors import ConfigError, ProvisioningError
from sealagg.appliance.federation import add_client
from sealagg.appliance.kit import AUTHORITY_SIGNATURE, SIGNATURE, load_kit
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten, unflatten
from sealagg.crypto.errors import MalformedMessageError
from sealagg.crypto.messages import decode

EXAMPLES = int(os.environ.get("SEALAGG_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CORPUS = corpus()
#: Allocation a refused input may cause, far below what its declared sizes would need.
BOUNDED = 2 * 1024 * 1024


def _mutate(data: bytes, draw) -> bytes:
    """One to four byte-level mutations: flip, truncate, insert, splice another message."""
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "splice"]))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            other = draw(st.sampled_from(CORPUS))
            raw[pos:] = other[draw(st.integers(0, len(other) - 1)) :]
    return bytes(raw)


mutations = st.data()
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.binary(max_size=80)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-5, 2**31) | st.text(max_size=3), inner, max_size=5)
    ),
    max_leaves=20,
)


# --------------------------------------------------------------- crypto wire messages


@FUZZ
@given(st.sampled_from(CORPUS), mutations)
def test_protocol_decoder_on_mutated_transcripts(message, data):
    try:
        decoded = decode(_mutate(message, data.draw))
    except MalformedMessageError:
        return
    assert decode(decoded.encode()) == decoded


@FUZZ
@given(st.sampled_from(CORPUS), st.data())
def test_protocol_decoder_on_structure_mutations(message, data):
    """One field (or the version, type, round id) replaced by an arbitrary msgpack value."""
    body = msgpack.unpackb(message, raw=False, strict_map_key=False)
    key = data.draw(st.sampled_from(sorted(body, key=str)))
    body[key] = data.draw(msgpack_values)
    with contextlib.suppress(MalformedMessageError):
        decode(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize(
    "header",
    [
        b"\xc6\x7f\xff\xff\xff",  # bin 32, 2 GiB declared
        b"\xdb\x7f\xff\xff\xff",  # str 32
        b"\xdd\xff\xff\xff\xff",  # array 32, 4 billion items
        b"\xdf\xff\xff\xff\xff",  # map 32
        b"\x81\xa1y\xc6\x7f\xff\xff\xff",  # {"y": <2 GiB of bin>}
    ],
)
def test_declared_sizes_are_refused_before_allocation(header):
    tracemalloc.start()
    try:
        with pytest.raises(MalformedMessageError):
            decode(header + b"\x00" * 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOUNDED, peak


# ------------------------------------------------------------------------- protobuf

PB_TYPES = sorted(pb.DESCRIPTOR.message_types_by_name)


def _pb_samples() -> list[tuple[str, bytes]]:
    rid = bytes(range(32))
    samples = [
        pb.Task(step=pb.ProtocolStep(round_id=rid, phase=2, payload=CORPUS[5])),
        pb.Task(round_start=pb.RoundStart(round_id=rid, mode="secagg+", vector_length=137)),
        pb.UploadChunk(header=pb.UploadHeader(round_id=rid, total_bytes=1000, kind="protocol")),
        pb.UploadChunk(data=CORPUS[0]),
        pb.ModelChunk(header=pb.ModelHeader(version=3, total_bytes=99, sha256="ab" * 32)),
        pb.DecisionRequest(round_number=4, approve=True, reason="ok"),
    ]
    return [(type(m).__name__, m.SerializeToString()) for m in samples]


PB_SAMPLES = _pb_samples()


@FUZZ
@given(st.sampled_from(PB_TYPES), st.sampled_from(PB_SAMPLES), mutations)
def test_protobuf_decoders_on_mutated_messages(type_name, sample, data):
    cls = getattr(pb, type_name)
    with contextlib.suppress(DecodeError):
        cls.FromString(_mutate(sample[1], data.draw))


def test_protobuf_declared_length_is_not_allocated():
    # UploadChunk.data (field 2, bytes) declaring 2 GiB with 10 bytes present.
    evil = b"\x12" + b"\x80\x80\x80\x80\x08" + b"x" * 10
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            pb.UploadChunk.FromString(evil)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOUNDED


# --------------------------------------------------------------------- model codec


shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)
tensor_dicts = st.dictionaries(
    st.sampled_from(["a", "b", "layer.weight", "layer.bias"]),
    st.tuples(shapes, st.sampled_from(["float32", "float64", "float16", "int32", "bool"])),
    max_size=4,
).map(lambda d: {k: np.zeros(s, dtype=t) for k, (s, t) in d.items()})


@FUZZ
@given(tensor_dicts, tensor_dicts, st.integers(-1, 300))
def test_model_codec_refuses_mismatches_with_value_error(layout_of, tensors, length):
    layout = Layout.of(layout_of)
    try:
        flat = flatten(tensors, layout)
        assert flat.shape == (layout.dimension,)
    except ValueError:
        pass
    vector = np.zeros(max(length, 0), dtype=np.float32)
    try:
        out = unflatten(vector, layout)
        assert sorted(out) == sorted(layout_of)
    except ValueError:
        pass


# ---------------------------------------------------------------- safetensors import


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> bytes:
    return save_safetensors(base_model())


@FUZZ
@given(data=mutations)
def test_safetensors_import_on_mutated_files(tmp_path_factory, model_file, data):
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    path.write_bytes(_mutate(model_file, data.draw))
    try:
        loaded = _load_float_tensors(path)
    except CLIError as error:
        assert str(error)
        return
    assert all(a.dtype.kind == "f" for a in loaded.values())


@FUZZ
@given(data=st.data())
def test_safetensors_import_on_mutated_headers(tmp_path_factory, model_file, data):
    """The JSON header's dtype, shape and offsets replaced by arbitrary JSON values."""
    length = int.from_bytes(model_file[:8], "little")
    header = json.loads(model_file[8 : 8 + length])
    name = data.draw(st.sampled_from(sorted(header)))
    if name != "__metadata__":
        key = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        header[name][key] = data.draw(
            st.recursive(
                st.none() | st.integers(-(2**70), 2**70) | st.text(max_size=5),
                lambda inner: st.lists(inner, max_size=4),
                max_leaves=6,
            )
        )
    text = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + model_file[8 + length :])
    try:
        _load_float_tensors(path)
    except CLIError as error:
        assert str(error)


def test_safetensors_huge_declared_shape_is_refused_without_allocation(tmp_path):
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}}
    ).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(CLIError):
            _load_float_tensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOUNDED


# ------------------------------------------------------------------------ client kits


@pytest.fixture(scope="module")
def kit_archive(tmp_path_factory) -> bytes:
    from sealagg.appliance.federation import init_federation

    root = tmp_path_factory.mktemp("kit")
    fed = init_federation(root / "fed", name="fuzzfed", hosts=["localhost"], port=50051)
    return add_client(fed, "client0", archive=True, out=root / "client0.tar.gz").read_bytes()


@FUZZ
@given(data=mutations)
def test_kit_archive_loading_on_mutated_archives(tmp_path_factory, kit_archive, data):
    path = tmp_path_factory.mktemp("k") / "kit.tar.gz"
    path.write_bytes(_mutate(kit_archive, data.draw))
    try:
        kit = load_kit(path)
    except ProvisioningError as error:
        assert str(error)
        return
    assert kit.name == "client0"  # only a byte-identical kit content can load


@FUZZ
@given(data=st.data())
def test_kit_folder_loading_on_mutated_files(tmp_path_factory, kit_archive, data):
    """Unpacked kit whose one file is mutated: tampering is always detected."""
    import gzip
    import io

    folder = tmp_path_factory.mktemp("kf")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(kit_archive))) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    victim = data.draw(st.sampled_from(sorted(members)))
    for name, content in members.items():
        body = _mutate(content, data.draw) if name == victim else content
        (folder / name).write_bytes(body)
    try:
        load_kit(folder)
    except ProvisioningError as error:
        assert str(error)
        return
    loaded = (folder / victim).read_bytes()
    if victim in (SIGNATURE, AUTHORITY_SIGNATURE):  # hex text: whitespace around and between
        # byte pairs is not part of the signature; the signature bytes must be the original's
        assert bytes.fromhex(loaded.decode("ascii")) == bytes.fromhex(
            members[victim].decode("ascii")
        )
        return
    assert loaded == members[victim]  # unchanged, or refused


# ---------------------------------------------------------------------------- config


@pytest.fixture(scope="module")
def config_text(tmp_path_factory) -> bytes:
    from sealagg.appliance.federation import init_federation

    root = tmp_path_factory.mktemp("cfg")
    fed = init_federation(root / "fed", name="fuzzfed", hosts=["localhost"], port=50051)
    return fed.paths.config.read_bytes()


@FUZZ
@given(data=mutations)
def test_config_parsing_on_mutated_files(tmp_path_factory, config_text, data):
    path = tmp_path_factory.mktemp("c") / "sealagg.toml"
    path.write_bytes(_mutate(config_text, data.draw))
    try:
        load_config(path)
    except ConfigError as error:
        assert str(error)


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@FUZZ
@given(
    st.sampled_from(["aggregation", "deadlines", "server", "gates", "optimizer", "weights"]),
    st.sampled_from(["mode", "min_clients", "clip", "masked_input", "listen", "x", "client0"]),
    toml_values,
)
def test_config_structure_mutations_are_refused_clearly(section, key, value):
    data = {"federation": {"name": "f"}, section: {key: value}}
    try:
        config = parse_config(data)
    except ConfigError as error:
        assert "sealagg.toml" in str(error)
        return
    for name in ("clip", "ready_window"):  # whatever is accepted is sane
        assert math.isfinite(getattr(config.aggregation, name))
    assert all(math.isfinite(v) and v > 0 for v in config.deadlines.model_dump().values())


# ----------------------------------------------- the aggregate range check (rounds.py)


@FUZZ
@given(
    st.sampled_from([0.01, 0.1, 1.0, 5.0]),
    st.integers(3, 40),
    st.floats(0.001, 1.0),
    st.integers(0, 2**32 - 1),
)
def test_range_check_never_refuses_honest_sums(clip, n, w, seed):
    """Honest clipped inputs at the extremes of the range, any weights: never refused
    (the check that aborts out-of-range aggregates must not abort honest rounds)."""
    from sealagg.appliance.rounds import check_in_range
    from sealagg.crypto import QuantizationSpec, decode_sum, encode_update

    rng = np.random.default_rng(seed)
    spec = QuantizationSpec(clip=clip, max_clients=n)
    total = np.zeros(17, dtype=np.uint32)
    for _ in range(n):
        x = (rng.choice([-1.0, 1.0], size=16) * clip * rng.uniform(1.0, 3.0)).astype(np.float32)
        total += encode_update(x, float(rng.choice([w, 1.0])), spec)
    mean, total_weight = decode_sum(total, spec)
    check_in_range(mean, total_weight, spec, n)
