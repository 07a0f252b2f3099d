"""Striped secure aggregation on a Ray cluster (the ``sealagg[scale]`` extra).

The single-process appliance stays the default; nothing outside this package imports Ray,
and the protocol (``sealagg.crypto``) stays transport-free.

Architecture:

* :mod:`.stripe` - one Ray actor per coordinate range with its own modular accumulator.
  It stages each client's chunks and adds them only after the coordinator commits the one
  survivor list; then it removes exactly its range of every mask in the unmask plan
  (seekable AES-CTR, :mod:`sealagg.crypto.mask_slice`).
* :mod:`.coordinator` - one per round: the protocol's server state machine
  (:class:`sealagg.crypto.striped_server.StripedSecAggServer`) feeding vectors to stripes;
  a client is a survivor only if every stripe holds all its chunks; a lost stripe aborts
  the round with nothing published.
* :mod:`.cluster` - a local multi-node cluster with token auth and TLS, no
  dashboard/Jobs/Client.
* :mod:`.tls` - the local cluster's TLS material (a throw-away CA, one node certificate).
* :mod:`.local` - a one-process driver with real protocol clients (tests, benchmarks).
* :mod:`.masked_round` - a masked round of ``sealagg serve`` whose sum the stripes hold
  (``[scale]`` in ``sealagg.toml``): uploads arrive on the mutual-TLS port, their vectors go
  to the stripes in chunks from a worker thread, only blames reach the state machine.
* :mod:`.plain_stripe`, :mod:`.plain_round` - a plaintext or attested round of ``sealagg
  serve`` whose updates the stripes hold, range by range, streamed as they arrive: the rule
  runs inside the stripes (mean, median, trimmed mean per range; Krum, Multi-Krum and the
  geometric median from the sums of the stripes' partial distances), bit for bit the
  one-process round's result. Attested mode only on the local cluster (the stripes would
  otherwise see plaintext outside the attested machine).
* :mod:`.runtime` - starts (or joins) the cluster when the appliance starts with ``[scale]``,
  creates and probes the stripes, replaces a lost one before the next round, shuts down.
* :mod:`.groups` - many clients per round: independent secure groups
  (:mod:`sealagg.crypto.groups`; the server learns each group's sum, each over at least
  ``m`` clients), one round per group, group sums added in Z_(2^32); any group's abort
  aborts the round.

What a Ray node operator sees (stripes are inside the aggregator's trust domain, which
the threat model already assumes may be malicious): a stripe node sees, for its range,
every client's *masked* input, the unmask plan (survivors' self-mask keys and the pairwise
keys of survivors with dropped peers: never both masks of one client, the same rule the
one-process server keeps) and its slice of the sum. It never sees a Shamir share, an
identity key or a sealed share. In plaintext and attested modes a stripe node sees its
range of every client's update, as the appliance itself does in those modes. The
coordinator's node sees what the one-process appliance sees. A node operator who could
change the survivor list committed to one stripe could unmask one client on that stripe's
range: the list is committed by the coordinator only, and stripes refuse a list naming a
client they do not hold completely; but Ray traffic is not authenticated per actor, which
is why the nodes must be the appliance's own machines.

Hardening (implemented in :func:`.cluster.start_local_cluster` where marked *):
token authentication on* (``RAY_AUTH_MODE=token``, a fresh token per cluster); dashboard
off*, hence no Jobs API*; no Ray Client server*; usage stats off*; stripes on worker
nodes only*; mutually authenticated TLS on every Ray gRPC port* (``RAY_USE_TLS=1``,
``RAY_TLS_SERVER_CERT/KEY``, ``RAY_TLS_CA_CERT``; locally a throw-away CA whose key is
never written, :mod:`.tls`). For a multi-machine cluster (``[scale] address``) the operator
issues node certificates from the appliance's private CA, sets those variables in every
node's and the appliance's environment (the appliance logs a warning when it joins without
``RAY_USE_TLS``), and keeps every Ray port on a private network, firewalled; only the
appliance's mutual-TLS port faces clients.
"""
