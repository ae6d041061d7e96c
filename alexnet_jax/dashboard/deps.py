"""The routes' dependencies: the shared ``Dashboard``, a job id resolved to its row, a submitted form.

A route names what it needs in its signature, as FastAPI code does (the aliases follow
fastapi/full-stack-fastapi-template's ``api/deps.py``)::

    @router.get('/models/{job_id}.json')
    def model_json(job_id: str, dash: Dash, row: ModelRow): ...

``JobRow`` resolves the path's ``job_id`` to its row and answers 404 for an unknown job; ``ModelRow`` and
``DatasetRow`` also answer 404 for a job of another kind; ``ClassifyJob`` is a Classify Many job's record.
``Form`` is the request's fields, uploads and file names (multipart, url-encoded or a JSON object),
read within the caps.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Annotated, Any, Callable, Optional

from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import forms
from alexnet_jax.dashboard import job_records
from alexnet_jax.dashboard import state


def get_dash(request: Request) -> state.Dashboard:
  return request.app.state.dash


Dash = Annotated[state.Dashboard, Depends(get_dash)]


def _row_of(kind: Optional[str]) -> Callable[..., dict[str, Any]]:
  """The dependency that resolves ``job_id`` to its row: 404 for an unknown job, or one of another kind."""

  def job_row(job_id: str, dash: Dash) -> dict[str, Any]:
    return dash.row(job_id) if kind is None else dash.row_of_kind(job_id, kind)

  return job_row


JobRow = Annotated[dict[str, Any], Depends(_row_of(None))]
ModelRow = Annotated[dict[str, Any], Depends(_row_of('model'))]
DatasetRow = Annotated[dict[str, Any], Depends(_row_of('dataset'))]


def classify_job(job_id: str, dash: Dash) -> job_records.Job:
  return dash.inference.classify_job(job_id)


ClassifyJob = Annotated[job_records.Job, Depends(classify_job)]


@dataclasses.dataclass
class Submitted:
  """A request's form: text fields, uploaded files' bytes, and the uploads' file names."""
  fields: dict[str, str]
  uploads: dict[str, bytes]
  filenames: dict[str, str]


async def read_form(request: Request) -> Submitted:
  """The fields, uploaded files and their file names of a multipart or url-encoded body, within the caps;
  a JSON object's values as the text a form would have sent."""
  content_type = request.headers.get('content-type', '')
  if content_type.startswith('application/json'):
    body = await request.body()
    try:
      data = json.loads(body or b'{}')
    except ValueError:
      raise errors_lib.DashboardError({'request': 'the body is not JSON'}) from None
    if not isinstance(data, dict):
      raise errors_lib.DashboardError({'request': 'the body must be a JSON object'})
    return Submitted({str(k): (v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else
                               ('true' if v is True else 'false' if v is False else str(v)))
                      for k, v in data.items()}, {}, {})
  form = await request.form(max_files=8, max_fields=400, max_part_size=forms.MAX_UPLOAD_BYTES)
  fields, uploads, names = {}, {}, {}
  for key, value in form.multi_items():
    if isinstance(value, UploadFile):
      data = await value.read(forms.MAX_UPLOAD_BYTES + 1)
      if data:
        uploads[key] = data
        names[key] = os.path.basename(value.filename or '')
    else:
      fields[key] = value
  return Submitted(fields, uploads, names)


Form = Annotated[Submitted, Depends(read_form)]
