"""Recalibration jobs: the queue (job rows are the truth), the worker, the job itself."""
