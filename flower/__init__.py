"""Flower interoperability: sealagg's secure aggregation inside a Flower app (``sealagg[flower]``).

Two lines change in an existing Flower app that uses SecAgg+::

    ClientApp(client_fn=client_fn, mods=[sealagg_mod])            # was: secaggplus_mod
    DefaultWorkflow(fit_workflow=SealaggWorkflow(...))           # was: SecAggPlusWorkflow(...)

:func:`sealagg_mod` runs sealagg's client protocol around the ClientApp's training,
:class:`SealaggWorkflow` runs the server protocol over Flower's grid and hands the unmasked
weighted mean to the strategy. Supported Flower: exactly :data:`FLOWER_VERSION` (the extra pins
it; ``sealagg.flower.api`` checks the Flower symbols used here). This package builds on
``sealagg.crypto`` and ``sealagg.kernels`` only: never on the appliance or the client shim's
transport (their gRPC stubs need protobuf 7, which Flower forbids).
"""

from sealagg.flower.api import FLOWER_VERSION, check_flower_api
from sealagg.flower.knobs import KnobRefusedError, RoundPlan, SealaggKnobs
from sealagg.flower.mod import make_sealagg_mod, sealagg_mod
from sealagg.flower.workflow import RoundRecord, SealaggWorkflow

__all__ = [
    "FLOWER_VERSION",
    "KnobRefusedError",
    "RoundPlan",
    "RoundRecord",
    "SealaggKnobs",
    "SealaggWorkflow",
    "check_flower_api",
    "make_sealagg_mod",
    "sealagg_mod",
]
