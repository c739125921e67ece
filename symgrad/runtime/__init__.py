"""Stage 4: loading generated modules and training them (optimizers, schedules, data, checkpoints, MPI)."""
