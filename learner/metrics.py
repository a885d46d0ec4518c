"""Prometheus metrics of one Learner rank, exported through Ray's metrics agent (`ray.util.metrics`; Prometheus
sees `ray_nft_learner_*`): time and loss terms of the last update, tagged with the rank.
"""

from __future__ import annotations

from typing import Any

from actors.metrics import HeldGauge

LOSS_TERMS = ("loss", "policy_loss", "positive_loss", "negative_loss", "kl", "old_deviation",  # NFT
              "ratio", "approx_kl", "clip_fraction")  # Flow-GRPO


class LearnerMetrics:
    def __init__(self, rank: int):
        self.update_seconds = HeldGauge("nft_learner_update_seconds", "seconds of the last update on this rank",
                                        tag_keys=("rank",))
        self.loss = HeldGauge("nft_learner_loss", "loss terms of the last update, averaged over its passes",
                              tag_keys=("rank", "term"))
        self.grad_norm = HeldGauge("nft_learner_grad_norm", "gradient norm before clipping, last update's mean",
                                   tag_keys=("rank",))
        for metric in (self.update_seconds, self.loss, self.grad_norm):
            metric.set_default_tags({"rank": str(rank)})

    def updated(self, result: dict[str, Any]) -> None:
        """Export one `Learner.update` result."""
        self.update_seconds.set(float(result["seconds"]))
        for term in LOSS_TERMS:
            if term in result:  # each algorithm reports its own terms
                self.loss.set(float(result[term]), tags={"term": term})
        self.grad_norm.set(float(result["grad_norm"]))
