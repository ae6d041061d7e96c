"""The process a command runs in: flags, devices, hosts, files, progress, status, lock, stop signals.

The bottom layer of alexnet_jax: nothing here imports another package of it. Every command and every
library above uses these modules for what a process needs whatever it computes -- parse its flags and
report a user error (``cli``), choose and force its devices before JAX starts (``devices``,
``distributed``, ``host_memory``), write files whole and read and write JSON (``fileio``), keep paths
inside the allowed roots (``confinement``), show progress (``progress``), name the process, tell whether
it is alive and end with a defined exit status (``process``), say what it is doing (``status``), copy its
log lines to the workdir (``logs``), hold its workdir (``lock``) and stop cleanly at a signal
(``stopping``).
"""
