"""Verified weight sync on real Sampler actors: every θ_old a Sampler applies is read back, checksummed and held to
the learner's checksum of that version; a corrupted broadcast stops the run with a clear error."""

import numpy as np
import pytest

from actors.policy import OLD, Policy, as_numpy, weights_checksum
from actors.sampler_pool import SamplerPool, WeightSyncError
from configs.schema import LoraConfig, PolicyConfig, SamplerConfig


@pytest.fixture(scope="module")
def policy_cfg(tiny_pipeline):
    return PolicyConfig(pretrained=tiny_pipeline, resolution=32, lora=LoraConfig(rank=4, alpha=8))


def test_checksum_tells_equal_from_unequal_weights(policy_cfg):
    weights = as_numpy(Policy.from_pretrained(policy_cfg, adapters=(OLD,)).get_weights(OLD))
    same = {k: v.copy() for k, v in reversed(weights.items())}  # key order does not matter
    assert weights_checksum(weights) == weights_checksum(same)
    key = next(iter(weights))
    same[key].flat[0] = np.nextafter(same[key].flat[0], np.float32(1))  # one float32 ulp
    assert weights_checksum(weights) != weights_checksum(same)


def test_broadcasts_are_verified_and_a_corrupted_one_is_caught(local_ray, policy_cfg):
    ray = local_ray
    weights = as_numpy(Policy.from_pretrained(policy_cfg, adapters=(OLD,)).get_weights(OLD))
    pool = SamplerPool(policy_cfg, SamplerConfig(num_actors=2, num_cpus=0), max_inflight=1)
    try:
        pool.broadcast_weights(ray.put(weights), 1, ray.put(weights_checksum(weights)))
        assert pool.verify(timeout_s=60) == 0 and pool.verified_broadcasts == 2

        key = next(iter(weights))
        corrupted = {k: v.copy() for k, v in weights.items()}
        corrupted[key][0, 0] += 0.5  # what the samplers receive is not what the learner published
        pool.broadcast_weights(ray.put(corrupted), 2, ray.put(weights_checksum(weights)))
        with pytest.raises(WeightSyncError, match=r"Sampler \d holds θ_old version 2 with checksum [0-9a-f]{16}, but "
                                                  r"the learner published [0-9a-f]{16}"):
            pool.verify(timeout_s=60)
        assert pool.verified_broadcasts == 2
    finally:
        pool.shutdown()
