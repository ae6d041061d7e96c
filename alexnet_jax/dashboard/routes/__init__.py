"""The dashboard's routes, one ``APIRouter`` per area, included by ``app.create_app`` in this order:

    home.py       /, /index.json, static files, path completion, the demo folder
    datasets.py   New Dataset, a dataset's page and JSON, Explore, its stored images, the resize example
    models.py     New Model, a model's page, JSON and live stream, Visualize LR, Compare
    jobs.py       Abort, Resume, edit, Delete, Clone, a job's files, /jobs/<id>.json
    inference.py  a trained model: snapshots, Classify One / Many, visualizations, download, census
    pretrained.py Pretrained Models: upload, list, verify, classify from one, ONNX download, delete

A route reads what it needs through ``deps`` (the shared ``Dashboard``, a job's row with its 404 and kind
check, the submitted form), builds its answer with ``views`` (pages and JSON) or ``trained_model``, and
raises ``errors.DashboardError`` to refuse. The order matters where two paths overlap:
``/datasets/resize_example.png`` before ``/datasets/{job_id}``, ``/models/lr_curve.json`` before
``/models/{job_id}.json``.
"""
