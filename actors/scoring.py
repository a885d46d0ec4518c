"""The scoring step of the flow: a `GroupScorer` actor sends a Sampler's groups to the reward servers.

It receives the Sampler's output ObjectRef directly (Ray task chaining, the driver never touches the images)
and returns one object per consumer: small `GroupSummary`s for the driver, `TrainingGroup`s (x0 and conditioning,
no pixels) for the learner, and one preview image per group for the run's grids; the images themselves are
released once scored. A group whose scoring fails, or whose score is missing or not finite, carries `failure` and
is dropped upstream — never a default. Evaluation uses `score_groups`, which returns the scored groups whole.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np

from actors.group import Group, GroupSummary, TrainingGroup
from actors.metrics import ScoringMetrics
from configs.schema import RewardConfig
from reward_service.client import RewardClient, RewardError

REPLICA_RESTART_TIMEOUT_S = 600.0  # a restarted replica builds its scorers again: minutes for large models
REPLICA_WAIT_LOG_S = 10.0  # a replica not back by then is said to be waiting (for a node with its resources)


def combine(scores: dict[str, list[float | None]], weights: dict[str, float]) -> tuple[list[float] | None, str | None]:
    """R = Σ_k w_k · score_k per image; (None, reason) when a weighted score is absent, failed or not finite."""
    total = None
    for name, weight in weights.items():
        values = scores.get(name)
        if values is None:
            return None, f"reward server returned no {name!r} scores"
        bad = [i for i, v in enumerate(values) if v is None or not math.isfinite(v)]
        if bad:
            return None, f"scorer {name!r} failed on {len(bad)} of {len(values)} images"
        part = np.asarray(values, dtype=np.float64) * weight
        total = part if total is None else total + part
    return [float(v) for v in total], None


class GroupScorer:
    """Async actor: many groups in flight, balanced over reward replicas by the RewardClient."""

    def __init__(self, reward_cfg: RewardConfig, urls: list[str], replicas: list | None = None):
        self.weights = dict(reward_cfg.weights)
        self.needs = {"CPU": reward_cfg.num_cpus, "GPU": reward_cfg.num_gpus, **reward_cfg.resources}
        self.client = RewardClient.from_config(reward_cfg, urls)
        # RewardReplica actor handles: Ray restarts a dead replica on a new port, and only the actor can say which.
        self.replicas = list(replicas or [])
        self._refresh: asyncio.Future | None = None
        self._failures_seen = 0  # the client's failure count when the URLs were last asked for
        self.fault_counts = {"reward_url_refreshes": 0, "scoring_failed_groups": 0, "invalid_reward_groups": 0}
        self.scored: set[int] = set()  # prompt-stream indices of the training groups scored (`score`)
        self.rescored_groups = 0  # training groups scored a second time: none, unless a fault path repeats work
        self.metrics = ScoringMetrics()

    async def score(self, groups: list[Group]) -> tuple[list[GroupSummary], list[TrainingGroup], np.ndarray]:
        """Score every group of one sample call; call with `.options(num_returns=3)`: summaries for the driver,
        training groups for the learner, the first image of each group (G, H, W, 3) for grids."""
        await self.score_groups(groups)
        for group in groups:
            self.rescored_groups += group.index in self.scored
            self.scored.add(group.index)
        return ([GroupSummary.of(g) for g in groups], [g.for_learner() for g in groups],
                np.stack([g.images[0] for g in groups]))

    async def score_groups(self, groups: list[Group]) -> list[Group]:
        """Score every group in place and return them whole (evaluation keeps the scores and images)."""
        for group in groups:
            await self.score_group(group)
        self.metrics.client_stats(self.client.stats())
        return groups

    async def score_group(self, group: Group) -> Group:
        try:
            scores = await self._score(group)
        except RewardError as error:
            self.fault_counts["scoring_failed_groups"] += 1
            group.failure = f"reward request failed: {error}"
            return group
        if self.replicas and self.client.stats()["failures"] > self._failures_seen:
            self._start_refresh()  # another replica answered; look for the failed one's new address meanwhile
        group.scores = {k: [float("nan") if v is None else float(v) for v in vs] for k, vs in scores.items()}
        group.reward, group.failure = combine(scores, self.weights)
        self.fault_counts["invalid_reward_groups"] += group.failure is not None
        return group

    async def _score(self, group: Group) -> dict[str, list[float | None]]:
        request = (group.images, [group.prompt] * group.size, [group.metadata] * group.size)
        try:
            return await self.client.score(*request, scorers=list(self.weights))
        except RewardError:
            if not (self.replicas and await self._start_refresh()):
                raise
        return await self.client.score(*request, scorers=list(self.weights))  # once more, at the new addresses

    def _start_refresh(self) -> asyncio.Future:
        """One URL refresh at a time; groups failing together share it. Resolves to whether the URLs changed."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refresh_urls())
        return self._refresh

    async def _refresh_urls(self) -> bool:
        failures = self.client.stats()["failures"]
        replicas = self.replicas  # set_replicas (the reward scaler) replaces the list; its URLs then win
        # url() is retried while Ray restarts a replica (on another node if its node was lost), so it answers from
        # the new address; one out of restarts, or not back within the bound, is left out.
        asking = [asyncio.ensure_future(asyncio.wait_for(replica.url.options(max_task_retries=-1).remote(),
                                                         REPLICA_RESTART_TIMEOUT_S)) for replica in self.replicas]
        _, waiting = await asyncio.wait(asking, timeout=REPLICA_WAIT_LOG_S)
        if waiting:  # meanwhile the client sends only to the replicas that answered
            print(f"GroupScorer: reward replicas {[i for i, a in enumerate(asking) if a in waiting]} are being "
                  f"restarted and wait for a node with {self.needs} free (up to {REPLICA_RESTART_TIMEOUT_S:.0f}s); "
                  f"scoring goes on on the others. If none comes, grow the reward node group", flush=True)
            if replicas is self.replicas:
                self._set_urls([a.result() for a in asking if a.done() and not a.exception()])
        answers = await asyncio.gather(*asking, return_exceptions=True)
        self._failures_seen = failures
        if replicas is not self.replicas:
            return True  # the replica set changed meanwhile: retry at its URLs
        return self._set_urls([answer for answer in answers if isinstance(answer, str)])

    def _set_urls(self, urls: list[str]) -> bool:
        """Send to `urls` from now on; whether they changed (none: keep the old ones, the client raises there)."""
        if not urls or urls == self.client.urls:
            return False
        print(f"GroupScorer: reward replicas now serve at {urls} (were {self.client.urls})", flush=True)
        self.client.set_urls(urls)
        self.fault_counts["reward_url_refreshes"] += 1
        return True

    def set_replicas(self, replicas: list, urls: list[str]) -> None:
        """The reward scaler's new replica set: requests go only to `urls` from now on; those in flight to a
        removed replica finish there (the scaler waits on `outstanding` before stopping it)."""
        self.replicas = list(replicas)
        self._set_urls(list(urls))

    def load(self) -> dict[str, int]:
        """Requests in flight now to each replica the client sends to."""
        per_url = self.client.stats()["per_url"]
        return {url: per_url[url]["outstanding"] for url in self.client.urls}

    def outstanding(self, url: str) -> int:
        """Requests in flight now to `url`, a replica sent to now or before."""
        return self.client.stats()["per_url"].get(url.rstrip("/"), {}).get("outstanding", 0)

    def counts(self) -> dict[str, int]:
        """Failure counts for the run's metrics log: groups lost to scoring, URL refreshes, request failures."""
        stats = self.client.stats()
        return {**self.fault_counts, "reward_request_failures": stats["failures"], "reward_retries": stats["retries"],
                "scored_groups": len(self.scored), "rescored_groups": self.rescored_groups}

