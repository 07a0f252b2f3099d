"""Helpers for the hardening tests (issue 10): transcripts, forged certificates, a TCP proxy.

Imported by ``tests/test_hardening_*.py`` (pytest puts ``tests/`` on ``sys.path``) and by
``benchmarks/load.py``. Nothing here is mocked: the proxy forwards real TCP, the certificates
are real X.509 signed with the federation's CA key, the transcripts are real rounds.
"""
