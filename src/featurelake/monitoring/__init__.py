"""Monitoring and alerting: Prometheus metrics, a local metrics state, alert rules and notification channels.

- :mod:`featurelake.telemetry`: the one registry and every metric object (the server's ``/metrics``).
- :mod:`featurelake.monitoring.recorder` / :mod:`~featurelake.monitoring.jobs`: recording from jobs and
  components into the registry, the local state (``.featurelake/metrics.db``) and a Pushgateway.
- :mod:`featurelake.monitoring.rules`: alert rules as YAML data; :mod:`~featurelake.monitoring.rules.promql`
  exports them for Prometheus.
- :mod:`featurelake.monitoring.alerts`: ``monitor()``, which evaluates the rules and notifies the
  :mod:`~featurelake.monitoring.channels` (console, file, slack).

Only :mod:`metrics` is imported eagerly here: the server's hot path needs nothing else.
"""

from __future__ import annotations

from featurelake import telemetry as metrics

__all__ = ["metrics"]
