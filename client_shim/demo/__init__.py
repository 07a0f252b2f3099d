"""The ``sealagg demo`` federation: 8x8 digits, a small MLP, one process per client.

``data`` splits scikit-learn's bundled digits (no network) into a held-out test set and
non-IID client shards; ``model`` holds the MLP, local training and evaluation; ``client`` is
the client process (``python -m sealagg.client_shim.demo.client``); ``runner`` provisions a
federation, starts the appliance and the clients, shows live progress and reports.
"""
