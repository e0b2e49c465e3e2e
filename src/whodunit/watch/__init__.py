"""
``whodunit watch``: read new audit events, detect incidents, notify, seal, export metrics.

The parts, each a module of its own:

- `whodunit.watch.reader`: reads what committed since a checkpoint, by snapshot, so a
  transaction that commits late (after higher ids were read) is never skipped;
- `whodunit.watch.detectors`: one small class per rule (mass deletes, TRUNCATE, DROP,
  privilege changes, direct human access, brute force, failure bursts);
- `whodunit.watch.alert`: the `Alert` they raise and the `AlertSink` that takes it;
- `whodunit.watch.daemon`: the loop, at least once: the checkpoint moves only after the
  sink has taken the alerts;
- `whodunit.watch.settings`: ``[watch]`` and ``[detectors.<rule>]`` of ``whodunit.toml``;
- `whodunit.watch.metrics`: the Prometheus metrics on ``/metrics``;
- `whodunit.watch.commands`: the ``whodunit watch`` command.

Nothing is imported here: ``import whodunit.watch.alert`` (what the notifiers need) must
not pull in the daemon, psycopg or prometheus_client.

This package may not import Flask: the daemon runs without the application.
"""
