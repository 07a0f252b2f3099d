"""The ``sealagg`` administration CLI: one typer app, one module per command group.

===============================  =================================================
command                          module
===============================  =================================================
``init``                         :mod:`appliance.cli.init`
``add-client``, ``revoke``,      :mod:`appliance.cli.clients`
``clients [readmit NAME]``
``serve``                        :mod:`appliance.cli.serve`
``status``                       :mod:`appliance.cli.status` (Admin.Status over mTLS)
``rounds``, ``approve``,         :mod:`appliance.cli.rounds` (Admin.Decide over mTLS)
``reject``
``model import|list|export``,    :mod:`appliance.cli.models`
``export``
``audit verify|export``          :mod:`appliance.cli.audit`
``authority init|approve|``      :mod:`appliance.cli.authority` (off the appliance)
``sign-roster|sign-kit``
``roster install``               :mod:`appliance.cli.clients`
``attest collateral fetch|show`` :mod:`appliance.cli.attest` (vendor collateral bundle)
===============================  =================================================

Every command takes ``--folder/-f`` (default ``./federation``, or ``$SEALAGG_FOLDER``).
Errors from the appliance's packages print one line and exit with code 1. The CLI never
imports torch: models export as safetensors. The benchmark suite is ``./run bench``
(``benchmarks/suite.py``) and the demo federation the client shim's ``sealagg-demo``: neither
is part of the appliance.
"""

import typer

from sealagg.appliance.cli import (
    admins,
    attest,
    audit,
    authority,
    certs,
    clients,
    console,
    init,
    models,
    rounds,
    runs,
    serve,
    state,
    status,
)
from sealagg.appliance.cli._common import SealaggGroup

__all__ = ["app"]

app = typer.Typer(
    name="sealagg",
    cls=SealaggGroup,
    help="Administer a sealagg secure-aggregation appliance.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback of an unexpected error must never print local variables: they can hold keys.
    pretty_exceptions_show_locals=False,
)

for _module in (
    init,
    clients,
    admins,
    certs,
    serve,
    status,
    runs,
    rounds,
    models,
    state,
    audit,
    authority,
    attest,
    console,
):
    _module.register(app)
