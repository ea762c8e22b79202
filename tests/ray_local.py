"""A private local Ray instance for tests that need real actors (never a shared or running cluster)."""

import shutil
import tempfile
from contextlib import contextmanager

import ray

from himac_ray.train import start_local_head


@contextmanager
def private_ray(num_cpus: int, prefix: str = "ray"):
    """`ray.init` on a fresh short temp dir (Ray's socket paths must stay short: pytest's tmp_path is
    too long), no dashboard, on loopback only; shut down and the dir removed on exit."""
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    start_local_head(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
