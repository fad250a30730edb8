"""Process entry points for registry race tests (module level, so any start method can run them)."""

from __future__ import annotations

from typing import Any


def promote_after_barrier(
    uri: str, artifacts: str, name: str, version: str, barrier: Any, results: Any
) -> None:
    """Plan a promotion to Production, wait until every racer has planned, then apply it."""
    from featurelake.errors import ConflictError
    from featurelake.registry import ModelRegistry

    with ModelRegistry(uri, artifacts) as reg:
        plan = reg.plan_transition(
            name, version, "Production", reason=f"race {version}", user=f"racer-{version}"
        )
        barrier.wait(timeout=60)
        try:
            reg.apply_transition(plan)
            results.put((version, "won", ""))
        except ConflictError as exc:
            results.put((version, "lost", str(exc)))


def register_after_barrier(
    uri: str, artifacts: str, name: str, path: str, barrier: Any, results: Any
) -> None:
    from featurelake.registry import ModelRegistry

    with ModelRegistry(uri, artifacts) as reg:
        reg.engine  # noqa: B018 - open (and migrate) before the race starts
        barrier.wait(timeout=60)
        results.put(reg.register(name, path, "pickle").version)
