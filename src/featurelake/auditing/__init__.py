"""One audit of one Write-Audit-Publish run, and its records: the checks bound to the run and its reference
(``runner``), the audit log ``<namespace>._audits`` and the feature statistics ``<namespace>._stats``.

The checks themselves and how they are evaluated live in ``validation``; this package runs them on a
project's tables through its engine.
"""
