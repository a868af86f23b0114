"""Without the optional `ray` package the Ray router says how to install it."""
import sys

import pytest

from llmserve.config import EngineConfig


def test_start_without_ray_names_the_extra(monkeypatch):
    # Was a bare "No module named 'ray'" from inside RayRouter.start(): `make install` does
    # not install the cluster extra.
    from llmserve.cluster.ray_backend import RayRouter
    monkeypatch.setitem(sys.modules, "ray", None)     # import ray -> ImportError
    router = RayRouter(EngineConfig(model="tiny"), num_replicas=1, num_gpus_per_replica=0)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[cluster\]'"):
        router.start()
