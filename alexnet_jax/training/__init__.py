"""Training: the loop, its optimizer and schedule, its checks, evaluation, fine-tuning, sweeps, profiling.

Above ``inference`` (fine-tuning starts from a bundle) and ``run`` (a run's workdir, checkpoints and
metrics); below the commands ``train``, ``evaluate`` and ``sweep`` and the dashboard's job worker.
"""
