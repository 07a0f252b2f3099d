"""The machinery behind ``./run bench`` (issue 9): run, merge, check budgets, report, plot.

Split so the pure parts (``metrics``, ``budgets``, ``report``) can be tested on synthetic JSON
without running anything; ``runner`` starts the measurements and ``plots`` imports matplotlib
only when called. It lives in ``benchmarks/`` (``benchmarks/suite.py`` imports it as
``harness``), outside the appliance, which never imports it.
"""
