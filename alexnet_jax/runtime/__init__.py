"""The process a command runs in: flags, devices, hosts, files, progress, status, lock, stop signals.

The bottom layer of alexnet_jax: nothing here imports another package of it. Every command and every
library above uses these modules for what a process needs whatever it computes -- parse its flags and
report a user error (``cli``), choose and force its devices before JAX starts (``devices``,
``distributed``, ``host_memory``), write files whole (``fileio``), keep paths inside the allowed roots
(``confinement``), show progress (``progress``), say what it is doing (``status``), hold its workdir
(``lock``) and stop cleanly at a signal (``stopping``).
"""
