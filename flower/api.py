"""The Flower API this package relies on, pinned: a moved symbol fails loudly, by name.

``sealagg[flower]`` pins ``flwr[simulation]==1.42.0``. :func:`check_flower_api` imports every
Flower symbol :mod:`sealagg.flower` uses and compares each callable's parameter names with
what 1.42.0 has; the tests run it, so an upgrade that moves or reshapes one of them is a red
test naming the symbol, not a silent misbehaviour in the middle of a round.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

FLOWER_VERSION = "1.42.0"

#: (module, attribute, parameter names of the callable, or None for a non-callable/class).
SYMBOLS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("flwr.app", "ConfigRecord", None),
    ("flwr.app", "RecordDict", None),
    ("flwr.app", "Context", ("self", "run_id", "node_id", "node_config", "state", "run_config",
                             "series_id")),
    ("flwr.app", "Message", ("self", "args", "dst_node_id", "message_type", "content", "error",
                             "ttl", "group_id", "dst_task_id", "reply_to", "metadata")),
    ("flwr.app.message_type", "MessageType", None),
    ("flwr.clientapp.typing", "ClientAppCallable", None),
    ("flwr.common", "parameters_to_ndarrays", ("parameters",)),
    ("flwr.common", "ndarrays_to_parameters", ("ndarrays",)),
    ("flwr.compat.common.recorddict_compat", "recorddict_to_fitres", ("recorddict",
                                                                      "keep_input")),
    ("flwr.compat.common.recorddict_compat", "fitins_to_recorddict", ("fitins", "keep_input")),
    ("flwr.compat.common.recorddict_compat", "arrayrecord_to_parameters", ("record",
                                                                           "keep_input")),
    ("flwr.compat.common.recorddict_compat", "parameters_to_arrayrecord", ("parameters",
                                                                           "keep_input")),
    ("flwr.server.compat.legacy_context", "LegacyContext", ("self", "context", "config",
                                                            "strategy", "client_manager")),
    ("flwr.server.workflow", "DefaultWorkflow", ("self", "fit_workflow", "evaluate_workflow")),
    ("flwr.server.workflow.constant", "MAIN_CONFIGS_RECORD", None),
    ("flwr.server.workflow.constant", "MAIN_PARAMS_RECORD", None),
    ("flwr.server.workflow.constant", "Key", None),
    ("flwr.serverapp.grid", "Grid", None),
    ("flwr.serverapp.grid.grid", "Grid.send_and_receive", ("self", "messages", "timeout")),
    ("flwr.server.strategy", "Strategy.configure_fit", ("self", "server_round", "parameters",
                                                        "client_manager")),
    ("flwr.server.strategy", "Strategy.aggregate_fit", ("self", "server_round", "results",
                                                        "failures")),
    ("flwr.server.history", "History.add_metrics_distributed_fit", ("self", "server_round",
                                                                     "metrics")),
    # The sealed round state (sealagg.flower.mod): the sealing key lives in Flower's home
    # directory; the state rides in Context.state, which both runtimes keep between messages.
    ("flwr.supercore.utils", "get_flwr_home", ()),
    ("flwr.common.constant", "FLWR_HOME", None),
    # The deployment runtime (tests/flower/test_flower_deployment.py): the SuperNode stores the
    # context a ClientApp process pushes back, per run series, and hands it to the next one.
    ("flwr.supernode.servicer.runtime.runtime_handlers", "push_task_output", ("request",
                                                                               "state", "task")),
    ("flwr.supernode.runtime.run_clientapp", "pull_task_input", ("client",)),
    ("flwr.supernode.runtime.run_clientapp", "push_message", ("client", "message", "context")),
    # What the deployment test drives: `flwr run <app> <connection>` (a connection named in
    # $FLWR_HOME/config.toml), and SuperExec's task poll interval (an environment variable).
    ("flwr.cli.run.run", "run", ("app", "superlink", "federation", "run_config_overrides",
                                 "federation_config_overrides", "stream", "output_format")),
    ("flwr.cli.constant", "SuperLinkConnectionTomlKey", None),
    ("flwr.supercore.superexec.run_superexec", "_TASK_POLL_INTERVAL_ENV", None),
    # Flower's own SecAgg+ pair, which ours replaces one for one (same knob names).
    ("flwr.client.mod", "secaggplus_mod", ("msg", "ctxt", "call_next")),
    ("flwr.server.workflow", "SecAggPlusWorkflow", ("self", "num_shares",
                                                    "reconstruction_threshold", "max_weight",
                                                    "clipping_range", "quantization_range",
                                                    "modulus_range", "timeout")),
)  # fmt: skip


class FlowerApiMovedError(RuntimeError):
    """The installed Flower is not the one sealagg.flower was written and tested against."""


def check_flower_api() -> None:
    """Raise :class:`FlowerApiMovedError` listing every version or symbol that moved."""
    problems = []
    installed = importlib.metadata.version("flwr")
    if installed != FLOWER_VERSION:
        problems.append(f"flwr {installed} is installed; sealagg.flower supports {FLOWER_VERSION}")
    for module_name, attribute, params in SYMBOLS:
        where = f"{module_name}.{attribute}"
        try:
            obj = importlib.import_module(module_name)
            for part in attribute.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as error:
            problems.append(f"{where} is gone ({error})")
            continue
        if params is None:
            continue
        target = obj.__init__ if inspect.isclass(obj) else obj
        found = tuple(inspect.signature(target).parameters)
        if found != params:
            problems.append(f"{where} takes {found}, sealagg.flower expects {params}")
    if problems:
        raise FlowerApiMovedError("Flower's API moved:\n  " + "\n  ".join(problems))
