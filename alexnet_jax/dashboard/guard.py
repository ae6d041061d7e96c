"""The request guard: what every request passes before any route runs (DASHBOARD.md, "Security").

``Guard`` is pure ASGI middleware, added last in ``app.create_app`` so that it is the outermost layer:

* **Host allowlist**: a Host the server does not answer to is refused (400): a DNS-rebinding page
  reaches a loopback server under its own host name.
* **Same origin and the token** on every POST/PUT/DELETE: ``Origin`` of this server and ``Sec-Fetch-Site``
  same-origin (or none), and the token in ``Authorization: Bearer`` or ``X-Dashboard-Token`` (403).
  A cross-site GET is refused unless it is a navigation to a page (``security.cross_site_read_ok``).
* **The token for reading**: ``/?token=...`` (the URL printed at start) is exchanged for an HttpOnly
  ``SameSite=Strict`` cookie; with ``--require_token`` (or any non-loopback bind) every request needs it.
* **Body cap**: a declared or streamed body past ``max_body`` (``large_bodies``' own cap for the POST
  of a path there: a pretrained model's upload) is refused (413) before a route reads it.
* **Headers** on every answer: nosniff, no framing, no referrer, the content security policy.

The checks themselves (token comparison, host and origin parsing) are ``security.py``'s; refusals are
``errors.response``'s envelope.
"""

from __future__ import annotations

from typing import Optional

from fastapi.responses import RedirectResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import security

CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class _TooLarge(StarletteHTTPException):
  """A body past the cap, found while reading it (no Content-Length): answered 413 by the handler."""

  def __init__(self, limit: int):
    super().__init__(413, f'larger than {limit // 2**20} MiB' if limit >= 2**20 else
                     f'larger than {limit} bytes')


class Guard:
  """Pure ASGI middleware: Host allowlist, token and same-origin checks, body cap, security headers."""

  def __init__(self, app, *, token: str, hosts: frozenset[str], require_token: bool, max_body: int,
               large_bodies: Optional[dict[str, int]] = None):
    self.app = app
    self.token = token
    self.hosts = hosts
    self.require_token = require_token
    self.max_body = max_body
    self.large_bodies = dict(large_bodies or {})   # path -> its own cap (a pretrained model's upload)

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    headers = Headers(scope=scope)
    host = headers.get('host', '')

    async def refuse(status: int, field: str, message: str) -> None:
      await errors_lib.response(status, {field: message})(scope, receive, send)

    if security.split_host(host) not in self.hosts:
      return await refuse(400, 'host', 'this server does not answer to that Host')
    method = scope['method']
    max_body = self.large_bodies.get(scope.get('path') or '', self.max_body) if method == 'POST' else \
        self.max_body
    given = security.bearer(headers.get('authorization')) or headers.get(security.TOKEN_HEADER)
    header_ok = security.same_token(given, self.token)
    cookie_ok = security.same_token(_cookie(headers.get('cookie', ''), security.COOKIE), self.token)
    if method not in security.SAFE_METHODS:
      if not security.origin_ok(headers.get('origin'), host) or not security.fetch_site_ok(
          headers.get('sec-fetch-site')):
        return await refuse(403, 'origin', 'cross-site request refused')
      if not header_ok:
        return await refuse(403, 'token', 'missing or wrong token: send "Authorization: Bearer <token>" '
                                          '(the token is in <jobs_dir>/.dashboard/token)')
      length = headers.get('content-length')
      if length is not None and (not length.isdigit() or int(length) > max_body):
        return await refuse(413, 'request', f'larger than {max_body // 2**20} MiB')
    elif not security.cross_site_read_ok(headers.get('sec-fetch-site'), headers.get('sec-fetch-mode'),
                                         scope.get('path') or ''):
      return await refuse(403, 'origin', 'cross-site request refused: open the dashboard itself')
    elif not cookie_ok and 'token=' in scope.get('query_string', b'').decode('latin-1'):
      # The URL printed at start (``/?token=...``) is exchanged for an HttpOnly cookie, on any bind: that
      # cookie is what proves a browser has the token, and only then do pages carry it (``render``).
      query = scope.get('query_string', b'').decode('latin-1')
      offered = dict(p.split('=', 1) for p in query.split('&') if '=' in p).get('token')
      if security.same_token(offered, self.token):
        response = RedirectResponse(scope.get('path') or '/', status_code=303)
        response.set_cookie(security.COOKIE, self.token, httponly=True, samesite='strict',
                            secure=scope.get('scheme') == 'https', path='/')
        return await response(scope, receive, send)
      return await refuse(401, 'token', 'wrong token in the URL: open the URL the server printed at start')
    elif self.require_token and not (header_ok or cookie_ok):
      return await refuse(401, 'token', 'open the URL the server printed at start (it carries the token), or '
                                        'send "Authorization: Bearer <token>"')

    scope.setdefault('state', {})['token_proven'] = header_ok or cookie_ok   # read by state.Dashboard.page_token
    seen = 0

    async def limited_receive():
      nonlocal seen
      message = await receive()
      if message.get('type') == 'http.request':
        seen += len(message.get('body', b''))
        if seen > max_body:
          raise _TooLarge(max_body)
      return message

    started = False

    async def send_with_headers(message):
      nonlocal started
      if message['type'] == 'http.response.start':
        started = True
        extra = [(b'x-content-type-options', b'nosniff'), (b'x-frame-options', b'DENY'),
                 (b'referrer-policy', b'no-referrer'), (b'content-security-policy', CSP.encode()),
                 (b'cross-origin-resource-policy', b'same-origin')]
        message = dict(message)
        message['headers'] = list(message.get('headers', [])) + extra
      await send(message)

    try:
      await self.app(scope, limited_receive, send_with_headers)
    except _TooLarge as e:
      if not started:
        await refuse(413, 'request', str(e.detail))


def _cookie(header: str, name: str) -> Optional[str]:
  for part in header.split(';'):
    k, _, v = part.strip().partition('=')
    if k == name:
      return v
  return None
