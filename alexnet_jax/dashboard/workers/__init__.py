"""The dashboard's helper processes, each beside the web-side client that starts and asks it.

    runner.py            runs a job's tool and records its exit status in the job's folder (``jobs.py``)
    worker_process.py    one helper process over a pipe (JSON lines): start, ask with a timeout, restart
    config_worker.py     imports JAX: checks a New Model form's settings, the tables, LR curves
    config_client.py     its web side (``ConfigClient``), and the list of installed experiments
    inference_worker.py  imports JAX: keeps models loaded; classify, visualize, export, census
    inference_client.py  its web side (``Predictor``: two lanes, interactive and background)

The boundary of the web process: ``app.py`` and the routes import the clients, ``runner`` and
``worker_process`` only; the ``*_worker.py`` modules run as ``python -m alexnet_jax.dashboard.workers...``
in their own processes (``tests/test_layout.py`` checks that the web process never imports JAX).
"""
