"""The web dashboard: DIGITS' workflow in a browser, on top of the same workdirs and command-line tools.

    python -m alexnet_jax.dashboard --jobs_dir=runs [--port=5000] [--host=127.0.0.1] [--data_root=DIR ...]

Modules, one job each:

    __main__.py   the command: flags, the token, uvicorn
    app.py        the FastAPI app: pages (Jinja2, server-rendered) and their JSON twins (DIGITS' routes)
    jobs.py       jobs: a workdir + job.json each, the queue, Abort / Resume / Delete, re-attaching
    runner.py     the tiny process that runs a tool and records its exit status in the job's folder
    forms.py      DIGITS' form fields -> checked values -> the tool's argv (never a shell)
    security.py   path confinement, Host / Origin checks, the token
    checker.py    the web side of worker.py
    worker.py     the process that imports JAX to check settings, count devices, draw LR curves
    worker_process.py  one helper process over a pipe (JSON lines): start, ask with a timeout, restart
    inference_pages.py the trained model's routes: snapshots, Classify One/Many, download, census
    predictor.py  the web side of inference_worker.py (two lanes: interactive, background)
    inference_worker.py the process that keeps models loaded: classify, visualize, export, census
    stream.py     the bytes appended to metrics.jsonl, for the live curves (server-sent events)

Importing this package imports nothing else: ``python -m alexnet_jax.dashboard.runner`` must start fast.
The web process itself never imports JAX (``tests/test_dashboard_api.py`` checks ``sys.modules``).
"""
