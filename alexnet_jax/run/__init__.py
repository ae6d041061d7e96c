"""What a workdir holds, in one layer below every tool: config, status, lock, checkpoints, metrics, restore.

A run directory is the database of alexnet_jax (DESIGN.md, DASHBOARD.md): the trainer writes it, and every
reader -- evaluate, classify, export, visualize, fine-tuning, the runs listing and the dashboard -- reads it
through the modules of this package. Nothing here imports a tool.
"""
