"""Test helpers: transcripts, forged certificates, a TCP proxy, attestation evidence.

Imported by the tests (pytest's ``pythonpath`` names ``tests/support``) and by
``benchmarks/load.py``. Nothing here is mocked: the proxy forwards real TCP, the certificates
are real X.509 signed with the federation's CA key, the transcripts are real rounds.
"""
