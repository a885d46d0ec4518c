"""LearnerGroup._wait on real Ray tasks: a rank whose update fails because a peer died under it (gloo's "Connection
reset by peer") is that peer's death, which recovery handles; a rank's own error with every peer alive is raised."""

import threading
import time

import pytest
from ray.exceptions import RayActorError, RayTaskError

from learner.learner_group import LearnerGroup


def rank_class(ray):
    @ray.remote(num_cpus=0)
    class Rank:
        def update(self, fail_after_s: float | None, work_s: float = 0.0):
            time.sleep(work_s)
            if fail_after_s is not None:
                time.sleep(fail_after_s)
                raise RuntimeError("[gloo/transport/tcp/pair.cc] Read error: Connection reset by peer")
            return "metrics"

    return Rank


def test_a_peers_death_under_a_failing_rank_is_reported_as_the_death(local_ray):
    Rank = rank_class(local_ray)
    survivor, victim = Rank.remote(), Rank.remote()
    local_ray.get([survivor.__ray_ready__.remote(), victim.__ray_ready__.remote()])
    refs = [survivor.update.remote(0.2), victim.update.remote(None, work_s=60.0)]
    # the survivor's error arrives first (as gloo's can, before Ray has noticed the death); the victim dies 1 s in
    killer = threading.Timer(1.0, local_ray.kill, [victim])
    killer.start()
    died = LearnerGroup._wait(refs, None)
    killer.join()
    assert isinstance(died, RayActorError)


def test_a_ranks_own_error_with_its_peers_alive_is_raised(local_ray):
    Rank = rank_class(local_ray)
    failing, fine = Rank.remote(), Rank.remote()
    refs = [failing.update.remote(0.0), fine.update.remote(None, work_s=0.5)]
    with pytest.raises(RayTaskError, match="Connection reset by peer"):
        LearnerGroup._wait(refs, None)
