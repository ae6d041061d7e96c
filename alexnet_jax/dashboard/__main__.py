r"""``python -m alexnet_jax.dashboard``: serve the dashboard of a jobs folder.

    python -m alexnet_jax.dashboard --jobs_dir=runs [--port=5000] [--host=127.0.0.1] \
        [--data_root=DIR ...] [--allowed_host=NAME ...] [--require_token] [--models_dir=FOLDER]

Prints the URL and the token. Bound to 127.0.0.1 by default; with any other --host every request needs
the token (the printed URL carries it once, then a cookie does). Image folders and list files typed
into the forms must lie inside a --data_root (default: the current folder); the demo folder is always
allowed. Jobs keep running when the dashboard stops, and the next start re-attaches them.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from alexnet_jax.dashboard import security


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m alexnet_jax.dashboard', description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--jobs_dir', required=True, help='folder of the jobs (workdirs); created if missing')
  p.add_argument('--port', type=int, default=5000, help='0: any free port')
  p.add_argument('--host', default='127.0.0.1', help='address to bind (default: loopback only)')
  p.add_argument('--data_root', action='append', default=[],
                 help='folder that form paths must lie in (repeatable; default: the current folder)')
  p.add_argument('--allowed_host', action='append', default=[], help='another Host name to answer to')
  p.add_argument('--require_token', action='store_true', help='need the token to read pages too')
  p.add_argument('--max_dataset_jobs', type=int, default=2, help='prepares running at once')
  p.add_argument('--models_dir', default=None,
                 help='a local store of model bundles (folders), listed read-only by Pretrained Models')
  p.add_argument('--log_level', default='warning')
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=args.log_level.upper(), format='%(levelname)s %(name)s: %(message)s')
  import uvicorn  # pylint: disable=g-import-not-at-top
  from alexnet_jax.dashboard import app as app_lib  # pylint: disable=g-import-not-at-top
  family = socket.AF_INET6 if ':' in args.host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((args.host, args.port))
  except OSError as e:
    print(f'dashboard: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}', file=sys.stderr)
    return 2
  sock.listen(128)   # before the URL is printed: a client that reads it may connect at once
  port = sock.getsockname()[1]
  try:
    settings = app_lib.Settings(jobs_dir=args.jobs_dir, data_roots=args.data_root, host=args.host, port=port,
                                require_token=True if args.require_token else None,
                                allowed_hosts=args.allowed_host, max_dataset_jobs=args.max_dataset_jobs,
                                models_dir=args.models_dir)
    app = app_lib.create_app(settings)
    shown = f'[{args.host}]' if ':' in args.host else args.host
    app.state.dash.manager.lock(f'http://{shown}:{port}/')   # before anything is served or launched
  except (OSError, ValueError) as e:
    print(f'dashboard: error: {e}', file=sys.stderr)
    return 2
  dash = app.state.dash
  shown = f'[{args.host}]' if ':' in args.host else args.host
  url = f'http://{shown}:{port}/'
  # The token in the URL: opening it once sets the cookie that lets this browser act (pages carry the
  # token only for a browser that proved it has it).
  print(f'alexnet_jax dashboard: {url}?token={dash.token}', flush=True)
  print(f'  jobs folder: {dash.jobs_dir}', flush=True)
  print(f'  data roots:  {", ".join(str(r) for r in dash.roots)}', flush=True)
  print(f'  token:       {dash.token}  (also in {os.path.join(dash.state_dir, security.TOKEN_FILE)}; '
        'scripts send "Authorization: Bearer <token>")', flush=True)
  config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=2, access_log=False,
                          lifespan='on')
  server = uvicorn.Server(config)
  server.run(sockets=[sock])
  return 0


def run():
  """Console-script entry point (``alexnet-dashboard``)."""
  sys.exit(main())


if __name__ == '__main__':
  run()
