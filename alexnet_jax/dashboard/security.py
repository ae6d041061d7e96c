"""What stands between the dashboard and a hostile page or form: paths, hosts, origins and the token.

The dashboard launches processes and reads paths, so (DASHBOARD.md, "Security"):

* **Paths** typed into a form (image folder, list files, a previous model) must resolve inside one of
  the ``--data_root`` folders: ``Path.resolve(strict=True).is_relative_to(root)``, which follows every
  symlink first, so a link inside a root that points out of it is refused like the path it points to.
  ``confine`` returns the resolved path or raises ``PathError`` with a message for the form -- the same
  message for a missing path and one outside the roots, naming no link target. The check itself is
  ``alexnet_jax.runtime.confinement``, which the jobs run again (``--confine_to``) on every image they read.
* **Host** header: only the names the server answers to (127.0.0.1, localhost, ::1, the --host and any
  --allowed_host). A DNS-rebinding page reaches a loopback server under its own host name; it is refused
  before any route runs.
* **State-changing requests** (POST/PUT/DELETE) need the server's token -- ``Authorization: Bearer`` from
  a script, the ``X-Dashboard-Token`` header from the pages -- and, when the browser sends them, an
  ``Origin`` of this server and a ``Sec-Fetch-Site`` of ``same-origin`` (or ``none``: typed in the bar).
* **Cross-site reads**: a GET from another site's page (``Sec-Fetch-Site: cross-site`` or ``same-site``) is
  refused unless it is a navigation to a page (``cross_site_read_ok``): no image, bundle or census work.
* **Reading**: on a loopback bind, pages are open to this machine's users (as DIGITS was); with any other
  --host, or ``--require_token``, every request needs the token, which a first visit to ``/?token=...``
  exchanges for an HttpOnly ``SameSite=Strict`` cookie. On any bind a page carries the token (for its
  scripts) only when the request proved it has it -- that cookie or the header -- so a local user who
  can read pages cannot read the token from them (the start-up line prints the URL with the token).

The token is random (``secrets.token_urlsafe``), kept in ``<jobs_dir>/.dashboard/token`` with mode 0600
and reused by later starts, so scripts keep working across restarts.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Iterable, Optional, Sequence
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from alexnet_jax.runtime import confinement

TOKEN_FILE = 'token'
COOKIE = 'alexnet_dashboard_token'
TOKEN_HEADER = 'x-dashboard-token'
LOOPBACK_NAMES = ('127.0.0.1', 'localhost', '::1')
SAFE_METHODS = ('GET', 'HEAD', 'OPTIONS')


class PathError(ValueError):
  """A path that does not exist or lies outside the allowed roots; the message is for the form."""


# ---- Paths ------------------------------------------------------------------------------------------

def resolve_roots(roots: Iterable[str | os.PathLike]) -> list[Path]:
  """The roots as resolved, existing folders (a missing one is an error at start-up)."""
  out = []
  for root in roots:
    path = Path(root).expanduser().resolve(strict=True)
    if not path.is_dir():
      raise NotADirectoryError(f'--data_root={root}: not a folder')
    if path not in out:
      out.append(path)
  return out


def confine(text: str, roots: Sequence[Path], *, want: str = 'any') -> Path:
  """The resolved path of ``text`` if it exists inside one of ``roots``; else ``PathError``.

  Args:
    text: what the form says: an absolute path, or one relative to the first root.
    roots: resolved folders (``resolve_roots``).
    want: 'dir', 'file' or 'any'.
  """
  text = (text or '').strip()
  if not text:
    raise PathError('required')
  if '\x00' in text:
    raise PathError('not a valid path')
  if not roots:
    raise PathError('no --data_root is configured on this server')
  raw = Path(text).expanduser()
  if not raw.is_absolute():
    raw = roots[0] / raw
  kind = 'folder' if want == 'dir' else 'file' if want == 'file' else 'path'
  path = confinement.resolve_inside(raw, roots)
  if path is None:
    # One message for a missing path and for one outside the roots (whether it exists there or not):
    # an error must not tell what lies outside them, nor where a link leads.
    raise PathError(f'{text}: no such {kind} inside the allowed folders')
  if want == 'dir' and not path.is_dir():
    raise PathError(f'{text}: not a folder')
  if want == 'file' and not path.is_file():
    raise PathError(f'{text}: not a file')
  return path


def inside(path: str | os.PathLike, roots: Sequence[Path]) -> bool:
  """Whether an existing path resolves inside one of ``roots`` (False when it does not exist)."""
  return confinement.is_inside(path, roots)


def complete(prefix: str, roots: Sequence[Path], limit: int = 50) -> list[str]:
  """Folders inside the roots whose path starts with ``prefix`` (the New Dataset path completion).

  An empty prefix lists the roots; ``/data/fl`` lists the folders of /data starting with ``fl``. Nothing
  outside the roots is listed, and a listed folder is one whose resolved path is inside them.
  """
  prefix = (prefix or '').strip()
  if not prefix:
    return [str(r) for r in roots][:limit]
  raw = Path(prefix).expanduser()
  if not raw.is_absolute() and roots:
    raw = roots[0] / raw
  parent, stem = (raw, '') if prefix.endswith('/') else (raw.parent, raw.name)
  if not inside(parent, roots):
    return [str(r) for r in roots if str(r).startswith(str(raw))][:limit]
  out = []
  try:
    with os.scandir(parent) as it:
      for entry in sorted(it, key=lambda e: e.name):
        if entry.name.startswith('.') or not entry.name.startswith(stem):
          continue
        if entry.is_dir() and inside(entry.path, roots):
          out.append(os.path.join(str(parent), entry.name) + '/')
          if len(out) >= limit:
            break
  except OSError:
    return []
  return out


# ---- Answers: encodable whatever bytes a path holds ------------------------------------------------------

def printable_tree(value):
  """``value`` (JSON-like) with every string made encodable (``confinement.printable``): a file name of
  non-UTF-8 bytes in a Classify Many list is shown as ``\\xe9`` instead of failing the whole answer."""
  if isinstance(value, str):
    return confinement.printable(value)
  if isinstance(value, dict):
    return {printable_tree(k): printable_tree(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [printable_tree(v) for v in value]
  return value


class PrintableJSONResponse(JSONResponse):
  """The dashboard's JSON answers: as Starlette's, but a string that cannot be UTF-8 is made printable."""

  def render(self, content) -> bytes:
    try:
      return super().render(content)
    except UnicodeEncodeError:
      return super().render(printable_tree(content))


# ---- Token --------------------------------------------------------------------------------------------

def load_or_create_token(state_dir: str) -> str:
  """The server's token from ``state_dir/token`` (mode 0600), made on first use."""
  os.makedirs(state_dir, mode=0o700, exist_ok=True)
  path = os.path.join(state_dir, TOKEN_FILE)
  try:
    with open(path, encoding='ascii') as f:
      token = f.read().strip()
    if len(token) >= 32:
      os.chmod(path, 0o600)
      return token
  except (OSError, UnicodeDecodeError):
    pass
  token = secrets.token_urlsafe(32)
  tmp = f'{path}.tmp-{os.getpid()}'
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  with os.fdopen(fd, 'w', encoding='ascii') as f:
    f.write(token + '\n')
  os.chmod(tmp, 0o600)
  os.replace(tmp, path)
  return token


def same_token(given: Optional[str], token: str) -> bool:
  return bool(given) and hmac.compare_digest(given.encode('utf-8', 'replace'), token.encode('ascii'))


def bearer(authorization: Optional[str]) -> Optional[str]:
  if not authorization:
    return None
  scheme, _, value = authorization.partition(' ')
  return value.strip() if scheme.lower() == 'bearer' else None


# ---- Hosts and origins -----------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
  if host in ('localhost',):
    return True
  try:
    return ipaddress.ip_address(host.strip('[]')).is_loopback
  except ValueError:
    return False


def split_host(value: str) -> str:
  """The host name of a Host header (``127.0.0.1:5000`` -> ``127.0.0.1``, ``[::1]:80`` -> ``::1``)."""
  value = (value or '').strip().lower()
  if value.startswith('['):
    return value[1:value.find(']')] if ']' in value else value
  return value.rsplit(':', 1)[0] if value.count(':') == 1 else value


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
  names = set(LOOPBACK_NAMES)
  if bind_host not in ('0.0.0.0', '::', ''):
    names.add(bind_host.lower())
  names.update(h.lower() for h in extra if h)
  return frozenset(names)


def origin_ok(origin: Optional[str], host_header: str) -> bool:
  """Whether an Origin header names this very server (scheme://host:port as the Host header says)."""
  if origin is None:
    return True                       # not a browser (curl, scripts): the token decides
  if origin == 'null':
    return False
  parts = urlsplit(origin)
  if parts.scheme not in ('http', 'https') or not parts.netloc:
    return False
  return parts.netloc.lower() == (host_header or '').strip().lower()


def does_work(path: str) -> bool:
  """GET routes that compute or read something heavy: images (decoded, resized, encoded), bundles, census."""
  return path.endswith(('.png', '/census.json')) or '/download.' in path


def cross_site_read_ok(site: Optional[str], mode: Optional[str], path: str) -> bool:
  """Whether a GET may run for this ``Sec-Fetch-Site``: another site's page (``cross-site``, or
  ``same-site``: another port of this host) may link to a page (a navigation), never embed or fetch
  anything else, and never start image or bundle work even by navigating (an ``<img>`` burst from a
  hostile page took the server to GBs, issue 24). Clients that send no such header (scripts) pass."""
  if site not in ('cross-site', 'same-site'):
    return True
  return mode == 'navigate' and not does_work(path)


def fetch_site_ok(value: Optional[str]) -> bool:
  return value is None or value in ('same-origin', 'none')
