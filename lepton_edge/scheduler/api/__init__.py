"""The scheduler's HTTP API and dashboard (FastAPI, served by uvicorn in a background thread).

``create_app(service)`` builds the application around a running ``SchedulerService`` (anything with
``store``, ``add_workload``, ``remove_workload``, ``replan``, ``is_leader`` and ``stats``);
``serve(service, host, port)`` starts it and returns an :class:`ApiServer` to stop it.

- JSON endpoints under ``/api`` (schema at ``/openapi.json``), one router per resource: ``devices``,
  ``workloads``, ``assignments``, ``events``, ``health`` (``/healthz`` for probes, ``/api/stats``); the
  dashboard at ``/`` with its files under ``/static`` (``dashboard``).
- FastAPI's ``/docs`` and ``/redoc`` pages load their scripts from a CDN, so they are disabled; open
  ``/openapi.json`` in any OpenAPI viewer instead.
- Every ``/api`` route needs ``Authorization: Bearer <token>`` with a role (``auth``: viewer, operator,
  admin; tokens at ``/api/tokens``), every change is audited (``audit``, ``/api/audit``), every response
  carries security headers (``headers``); ``/healthz`` needs no token.
- Errors (``errors``): a store that cannot answer gives ``503`` with the reason, unknown ids ``404``, taken
  ids ``409`` and invalid requests ``422`` with one message per problem.

FastAPI and uvicorn are optional dependencies: only this package imports them.
"""

from lepton_edge.scheduler.api.app import create_app
from lepton_edge.scheduler.api.dashboard import STATIC_DIR
from lepton_edge.scheduler.api.server import ApiServer, TlsFiles, serve

__all__ = ["STATIC_DIR", "ApiServer", "TlsFiles", "create_app", "serve"]
