"""The network on a device mesh: layouts as data, the forward pass per layout, the sharded train/eval step.

``layouts`` names where each tower and each batch shard lives (DESIGN.md: towers are an axis, layouts are
data); ``forward`` runs a network's stages on a layout with ``shard_map``, exchanging activations only where
the paper's two GPUs talked (conv3, fc6, fc7, fc8 inputs); ``step`` builds the jitted train and eval steps;
``census`` and ``compare`` count what a layout communicates and compare layouts for the ``census`` command.
Below ``run/`` (a workdir restores onto a layout) and above ``models/`` and ``data/`` (the device-side
augmentation runs inside the step).
"""
