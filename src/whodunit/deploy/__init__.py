"""
Ops configs generated from whodunit's settings, and checked with the real tools.

Each component (PgBouncer now; Prometheus, Alertmanager, Loki, Alloy, Jaeger, Grafana
and compose to come) is one module that declares its settings, renders its files and
lists its checks; registering it below is all ``whodunit deploy render`` and
``whodunit deploy check`` need to handle it.
"""

from __future__ import annotations

from whodunit.deploy import pgbouncer
from whodunit.deploy.render import Component

__all__ = ["COMPONENTS", "registry"]

#: Every component, in rendering order.
COMPONENTS: tuple[Component, ...] = (pgbouncer.COMPONENT,)


def registry() -> dict[str, type]:
    """Each component's settings table name and settings dataclass, for `settings.load`."""
    return {component.name: component.settings for component in COMPONENTS}
