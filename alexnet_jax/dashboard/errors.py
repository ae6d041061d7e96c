"""The dashboard's one error type and one error envelope.

Every refusal a client sees is DIGITS' form-error shape, ``{"errors": {field: message}}``, with an HTTP
status: 400 for a field that cannot be used, 403 for a refused origin or token, 404 for an unknown job or
file, 409 for an action the job's state forbids, 413 for a body past the cap, 503 when a helper process
could not answer, 507 for a full disk. Code anywhere under ``dashboard/`` raises ``DashboardError`` (the
forms with one message per bad field, the jobs with ``{"job": ...}``, the trained-model routes with the
field at fault); ``app.py`` turns it, FastAPI's validation errors and Starlette's HTTP errors into
``response``, and the request guard answers with ``response`` before any route runs. Nothing ever shows
a traceback (DASHBOARD.md, "Security" 7).
"""

from __future__ import annotations

from typing import Any, Mapping

from starlette.responses import JSONResponse

from alexnet_jax.dashboard import security


class DashboardError(ValueError):
  """A request the dashboard refuses: ``errors`` maps each field at fault to its message; ``status_code``
  is the HTTP status of the answer (as ``fastapi.HTTPException``'s)."""

  def __init__(self, errors: Mapping[str, str], status: int = 400):
    self.errors = dict(errors)
    self.status_code = status
    messages = list(self.errors.values())
    super().__init__(messages[0] if len(messages) == 1 else
                     '; '.join(f'{k}: {v}' for k, v in self.errors.items()))


def refused(field: str, message: str, status: int = 400) -> DashboardError:
  """One field's refusal (``raise refused('image_path', 'not a file')``)."""
  return DashboardError({field: message}, status)


def not_found(message: str) -> DashboardError:
  """An unknown job, file or image: 404 under ``request`` (a browser asking for a page gets the error
  page instead, ``app.py``)."""
  return DashboardError({'request': message}, 404)


def response(status: int, errors: Mapping[str, str], **beside: Any) -> JSONResponse:
  """The envelope: ``{"errors": {...}}`` (and, for a failed Classify Many, the job's fields beside it)."""
  return security.PrintableJSONResponse({'errors': dict(errors), **beside}, status_code=status)
