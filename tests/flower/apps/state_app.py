"""The mod's sealed round state in ``Context.state``, driven directly with Flower messages.

Run by tests/flower/test_flower_state.py with ``.venv-flower/bin/python -P`` and a temporary
``FLWR_HOME`` (where the sealing key is made). Each message gets a context rebuilt from its
protobuf form, as the deployment runtime hands a fresh ClientApp process the context the last
one pushed back. Writes one JSON document to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.serde import context_from_proto, context_to_proto

from sealagg.crypto import IdentityKey, RoundConfig
from sealagg.crypto.encoding import QuantizationSpec
from sealagg.crypto.messages import AdvertiseKeys, KeyDirectory, decode
from sealagg.flower import sealagg_mod
from sealagg.flower.records import PAYLOAD, RECORD, STAGE, STATE_RECORD, Offer, pack_offer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    contexts = {
        node: Context(run_id=7, node_id=node, node_config={}, state=RecordDict(), run_config={})
        for node in (3, 4)
    }
    counter = [0]

    def send(node: int, stage: str, payload: bytes):
        counter[0] += 1
        ctxt = context_from_proto(context_to_proto(contexts[node]))  # a fresh process's view
        content = RecordDict()
        content.config_records[RECORD] = ConfigRecord({STAGE: stage, PAYLOAD: payload})
        meta = Metadata(
            run_id=7, message_id=f"m{counter[0]}", src_node_id=1, dst_node_id=node,
            reply_to_message_id="", group_id="1", created_at=time.time(), ttl=60.0,
            message_type=MessageType.TRAIN,
        )  # fmt: skip
        try:
            reply = sealagg_mod(Message(content, metadata=meta), ctxt, lambda m, c: None)
            result = reply.content.config_records[RECORD][PAYLOAD]
        except Exception as error:
            result = f"refused: {type(error).__name__}: {error}"
        contexts[node] = ctxt  # the runtime keeps what the process pushed back, even on error
        return result

    def record(node: int) -> dict:
        rec = contexts[node].state.config_records.get(STATE_RECORD, ConfigRecord())
        return {k: v for k, v in rec.items() if isinstance(v, bytes)}

    out: dict = {}
    verify = {node: send(node, "identify", b"") for node in (3, 4)}
    ids = {1: verify[3], 2: verify[4]}
    ids.update({u: IdentityKey.generate().verify_key_bytes for u in (3, 4, 5)})
    config = RoundConfig(
        round_id=os.urandom(32), identities=ids, degree=4, threshold=3, vector_length=5,
        minimum_survivors=4,
    )  # fmt: skip
    spec = QuantizationSpec(8.0, 5)
    advert = send(3, "offer", pack_offer(Offer(config, 1, spec, 1e3)))
    out["offer_reply"] = advert if isinstance(advert, str) else "bytes"
    out["offer_answered_with_keys"] = isinstance(advert, bytes) and isinstance(
        decode(advert), AdvertiseKeys
    )
    out["record_after_offer"] = sorted(record(3))
    good = record(3)

    # A server message for another round: refused by the state's round binding.
    other = KeyDirectory(os.urandom(32), {}).encode()
    out["other_round"] = send(3, "protocol", other)
    out["after_other_round"] = send(3, "protocol", KeyDirectory(config.round_id, {}).encode())

    # Node 3's sealed state put into node 4's context: refused (bound to run and node).
    send(4, "offer", pack_offer(Offer(config, 2, spec, 1e3)))
    contexts[4].state.config_records[STATE_RECORD] = ConfigRecord(dict(good))
    out["other_node"] = send(4, "protocol", KeyDirectory(config.round_id, {}).encode())

    # A flipped bit in the sealed client state: refused, the round dropped.
    contexts[3].state.config_records[STATE_RECORD] = ConfigRecord(dict(good))
    bad = bytearray(good["client"])
    bad[-5] ^= 1
    contexts[3].state.config_records[STATE_RECORD]["client"] = bytes(bad)
    out["tampered"] = send(3, "protocol", KeyDirectory(config.round_id, {}).encode())
    out["record_after_tamper"] = sorted(record(3))

    home = Path(os.environ["FLWR_HOME"])
    key_file = home / "sealagg" / "state.key"
    out["key_mode"] = oct(key_file.stat().st_mode & 0o777)
    out["key_dir_mode"] = oct((home / "sealagg").stat().st_mode & 0o777)
    out["key_size"] = key_file.stat().st_size
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
