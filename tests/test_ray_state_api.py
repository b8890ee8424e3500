"""Ray's state API, asked from a worker, answers for the worker's own cluster even with a
second Ray on the host. Ray Train 2.60's PlacementGroupCleaner asks it whether the run's
controller is alive: with another Ray running it printed a "Found multiple active Ray
instances" traceback into training output."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def second_ray():
    """Another Ray head on this host, apart from this process's Ray."""
    import ray._private.utils
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        # Cluster records its address in /tmp/ray's address file, where a plain ray.init()
        # of any process on this shared host would then find and join it.
        patch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
        other = Cluster(initialize_head=False)
        other.add_node(num_cpus=0, object_store_memory=80 << 20)
    yield other
    other.shutdown()


def test_the_placement_group_cleaner_never_sees_a_live_controller_as_gone(ray_session, second_ray):
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Controller:
        def ping(self) -> bool:
            return True

    @ray.remote(num_cpus=0)
    def cleaner_check(actor_id: str) -> str:
        # What the PlacementGroupCleaner's monitor thread calls every few seconds: False
        # or None removes the run's placement group; a RayStateApiException means "state
        # unknown, keep watching" (a minimal Ray install serves no state API); anything
        # else ends the thread with a traceback.
        from ray.train.v2._internal.state.util import is_actor_alive
        from ray.util.state.exception import RayStateApiException

        try:
            return "alive" if is_actor_alive(actor_id, timeout=30) else "gone"
        except RayStateApiException:
            return "unknown"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    controller = Controller.remote()
    assert ray.get(controller.ping.remote())
    assert ray.get(cleaner_check.remote(controller._actor_id.hex())) in ("alive", "unknown")
