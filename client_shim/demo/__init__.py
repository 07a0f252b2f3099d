"""The demo federation (``sealagg-demo``): 8x8 digits, a small MLP, one process per client.

``data`` splits scikit-learn's bundled digits (no network) into a held-out test set and
non-IID client shards; ``model`` holds the MLP, local training and evaluation; ``client`` is
the client process (``python -m sealagg.client_shim.demo.client``). ``cli`` is the entry
point; ``runner`` composes a run: ``provision`` (through the ``sealagg`` CLI, with
``toml_edit`` for the few config keys), ``processes`` and ``supervise`` (appliance and
clients), ``status`` and ``display`` (live view), ``records`` and ``evaluate`` (the audited
record, accuracies), ``report``. Like all shim code it uses only the appliance's wire schema
and kit API; everything else goes through the ``sealagg`` command line.
"""
