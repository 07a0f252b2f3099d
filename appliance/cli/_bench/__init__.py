"""The machinery behind ``sealagg bench`` (issue 9): run, merge, check budgets, report, plot.

Split so the pure parts (``metrics``, ``budgets``, ``report``) can be tested on synthetic JSON
without running anything; ``runner`` starts the measurements and ``plots`` imports matplotlib
only when called. Nothing here imports torch, and nothing here is needed by the appliance itself.
"""
