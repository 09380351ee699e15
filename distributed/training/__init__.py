"""Training: the Ray-free loop and its in-process hosts, training steps, checkpoints, run records,
the streamed feed; the Ray adapters (ray_*: the Ray Train worker host and Ray Data datasets) and
launch (fit_folds: the loop on a host)."""
