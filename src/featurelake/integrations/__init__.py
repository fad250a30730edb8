"""Orchestrators: featurelake's jobs as Dagster assets (``integrations.dagster``) and Airflow tasks
(``integrations.airflow``), on the schedules of ``featurelake.yaml``'s ``orchestration`` section.

Both build the same shape (``integrations.shape``): one daily backfill per feature view (through
Write-Audit-Publish, after the views it reads), one batch prediction per scheduled model after its view, an
online sync after each publish, and the three maintenance schedules. Every run goes through the public API
(``featurelake.open`` and its methods, ``integrations.runs``): no job logic lives here. ``dagster`` and
``airflow`` are imported only by their own module (extras ``featurelake[dagster]``, ``featurelake[airflow]``).
See docs/orchestration.md.
"""
