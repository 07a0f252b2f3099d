"""Flower's knob names through sealagg's finder and policy, the client's own offer check, and
the Flower API pin; run by tests/flower/test_flower_knobs.py with ``.venv-flower/bin/python -P``.

Writes one JSON document to ``--out``: for each case, the plan or the refusal's reason.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sealagg.crypto import IdentityKey, RoundConfig
from sealagg.crypto.encoding import QuantizationSpec
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.policy import FederationPolicy
from sealagg.flower import KnobRefusedError, SealaggKnobs, SealaggWorkflow, check_flower_api
from sealagg.flower.records import Offer, check_offer, pack_offer, unpack_offer

CASES = {
    # name: (knobs, n)
    "defaults_n10": ({}, 10),
    "flower_style_n10": ({"num_shares": 10, "reconstruction_threshold": 4}, 10),
    "fraction_shares_n10": ({"num_shares": 1.0, "reconstruction_threshold": 0.5}, 10),
    "threshold_1": ({"num_shares": 10, "reconstruction_threshold": 1}, 10),
    "threshold_above_shares": ({"num_shares": 10, "reconstruction_threshold": 10}, 10),
    "sparse_too_weak_n10": ({"num_shares": 5, "reconstruction_threshold": 2}, 10),
    "modulus_2_16": ({"modulus_range": 1 << 16}, 10),
    "no_timeout": ({"timeout": None}, 10),
    "quantization_wraps_n10": ({"quantization_range": 1 << 30}, 10),
    "two_clients": ({}, 2),
    "shares_without_threshold": ({"num_shares": 10}, 10),
    "finder_refuses_colluders": ({"policy": FederationPolicy(colluders=4, minimum_sum=6)}, 5),
}


def mod_checks() -> dict:
    """The mod itself, driven with Flower messages: it refuses what it must, by name."""
    from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
    from flwr.app.message_type import MessageType

    from sealagg.flower import sealagg_mod
    from sealagg.flower.records import PAYLOAD, RECORD, STAGE

    ctxt = Context(run_id=7, node_id=3, node_config={}, state=RecordDict(), run_config={})
    passed_through, sent = [], []

    def call_next(msg, ctxt):
        passed_through.append(msg.metadata.message_type)
        return Message(RecordDict(), reply_to=msg)

    def send(stage: str, payload: bytes, message_type: str = MessageType.TRAIN):
        content = RecordDict()
        if stage:
            content.config_records[RECORD] = ConfigRecord({STAGE: stage, PAYLOAD: payload})
        meta = Metadata(
            run_id=7, message_id=f"m{len(sent)}", src_node_id=1, dst_node_id=3,
            reply_to_message_id="", group_id="1", created_at=time.time(), ttl=60.0,
            message_type=message_type,
        )  # fmt: skip
        sent.append(meta)
        msg = Message(content, metadata=meta)
        try:
            reply = sealagg_mod(msg, ctxt, call_next)
        except Exception as error:
            return f"refused: {type(error).__name__}: {error}"
        record = reply.content.config_records.get(RECORD)
        return record[PAYLOAD] if record is not None else "passed through"

    out: dict = {}
    out["evaluate_passes_through"] = send("", b"", MessageType.EVALUATE)
    out["train_without_sealagg_passes_through"] = send("", b"")
    out["protocol_without_round"] = send("protocol", b"x")
    key = send("identify", b"")
    out["identify_returns_a_verify_key"] = isinstance(key, bytes) and len(key) == 32
    ids = {1: key, **{u: IdentityKey.generate().verify_key_bytes for u in range(2, 11)}}
    weak = RoundConfig(
        round_id=bytes(32), identities=ids, degree=9, threshold=2, vector_length=5,
        minimum_survivors=3,
    )  # fmt: skip
    out["weak_offer"] = send("offer", pack_offer(Offer(weak, 1, QuantizationSpec(8.0, 10), 1e3)))
    # The refusal dropped the session: the round cannot go on in this process.
    out["after_refusal"] = send("protocol", b"x")
    out["calls_passed_to_the_clientapp"] = len(passed_through)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    report: dict = {"cases": {}}
    for name, (knobs, n) in CASES.items():
        try:
            plan = SealaggKnobs(**knobs).plan(n)
            report["cases"][name] = {
                "ok": True,
                "degree": plan.degree,
                "threshold": plan.threshold,
                "minimum_survivors": plan.minimum_survivors,
            }
        except KnobRefusedError as error:
            report["cases"][name] = {"ok": False, "reason": str(error)}
    # The workflow's constructor refuses the static ones at once.
    try:
        SealaggWorkflow(modulus_range=1 << 16)
        report["workflow_refuses_modulus"] = None
    except KnobRefusedError as error:
        report["workflow_refuses_modulus"] = str(error)
    # A client re-checks the server's offer: a quorum below the policy's is refused.
    ids = {u: IdentityKey.generate().verify_key_bytes for u in range(1, 11)}
    offers = {
        "honest": RoundConfig(
            round_id=bytes(32), identities=ids, degree=9, threshold=2, vector_length=5,
            minimum_survivors=6,
        ),
        "low_quorum": RoundConfig(
            round_id=bytes(32), identities=ids, degree=9, threshold=2, vector_length=5,
            minimum_survivors=3,
        ),
    }  # fmt: skip
    report["offers"] = {}
    for name, config in offers.items():
        offer = unpack_offer(pack_offer(Offer(config, 1, QuantizationSpec(8.0, 10), 1000.0)))
        try:
            check_offer(offer, FederationPolicy())
            report["offers"][name] = "accepted"
        except SecAggError as error:
            report["offers"][name] = f"refused: {error}"
    small = Offer(offers["honest"], 1, QuantizationSpec(8.0, 5), 1000.0)
    try:
        check_offer(small, FederationPolicy())
        report["offers"]["small_quantization"] = "accepted"
    except SecAggError as error:
        report["offers"]["small_quantization"] = f"refused: {error}"
    report["mod"] = mod_checks()
    try:
        check_flower_api()
        report["api"] = "ok"
    except Exception as error:  # reported, the test prints it
        report["api"] = f"{type(error).__name__}: {error}"
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
