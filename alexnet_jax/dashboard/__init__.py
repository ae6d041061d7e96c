"""The web dashboard: DIGITS' workflow in a browser, on top of the same workdirs and command-line tools.

    python -m alexnet_jax.dashboard --jobs_dir=runs [--port=5000] [--host=127.0.0.1] [--data_root=DIR ...]

Modules, one job each (FastAPI's usual cut: an app, routers per area, dependencies, views):

    __main__.py      the command: flags, the socket, the token, uvicorn
    app.py           create_app: settings, lifespan, exception handlers, the routers, the guard
    guard.py         the request guard: Host allowlist, same origin, the token, body cap, headers
    security.py      what the guard and the forms check with: path confinement, hosts, origins, the token
    errors.py        the one error type (DashboardError) and the one envelope {"errors": {field: message}}
    deps.py          the routes' dependencies: the Dashboard, a job id -> its row (404, kind), a form
    state.py         the Dashboard the routes share: settings, job manager, clients, templates, look-ups
    views.py         what the pages and JSON twins show, built apart from the routes
    routes/          one APIRouter per area: home, datasets, models, jobs, inference, pretrained
    forms.py         the New Dataset form (and the typed field reader): DIGITS' fields -> prepare's argv
    model_form.py    the New Model form: DIGITS' fields -> train's --config.x=v, sweeps
    jobs.py          JobManager: create, Abort / Resume / Delete / edit, the listing of every job
    job_queue.py     the queue: loading, re-attaching, launching jobs through workers/runner.py
    job_records.py   a job's folder: job.json, exit.json, states
    trained_model.py Classify One / Many, download, census of a trained model (dash.inference)
    snapshots.py     a run's finished snapshots: by step and epoch, the best, the one a request names
    pretrained_store.py  the pretrained models: uploaded ones and a --models_dir store (JSON files only)
    pretrained_import.py an upload (or server files) -> a verified bundle, imported in the worker
    files.py         the dashboard's own files: uploads, visualizations, download bundles
    images.py        image work in the web process: thumbnails, gallery images, the resize example
    stream.py        the bytes appended to metrics.jsonl, for the live curves (server-sent events)
    gpu_usage.py     DIGITS' GPU Usage panel (NVML when installed)
    workers/         the helper processes, each web-side client beside its worker (no JAX in the web)

Importing this package imports nothing else: ``python -m alexnet_jax.dashboard.workers.runner`` must start
fast. The web process itself never imports JAX (``tests/test_layout.py`` reads the imports,
``tests/test_dashboard_api.py`` checks ``sys.modules``).
"""
