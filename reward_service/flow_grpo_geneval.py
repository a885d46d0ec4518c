"""A RewardClient for the GenEval reward server of the Flow-GRPO ecosystem, which many users keep running in its own
environment (its detector, mmdet, is hard to install next to the trainer). Opt in with `reward.protocol:
flow_grpo_geneval`, `reward.replicas: 0` and `reward.urls: [http://host:port]`.

TRUSTED SERVERS ONLY. That server's wire format is Python pickle both ways: the request body is
`pickle.dumps({"images": [JPEG bytes, ...], "meta_datas": [GenEval metadata, ...], "only_strict": bool})` POSTed to
the server's root path, and the answer is a pickled dict with per-image `scores`, `rewards`, `strict_rewards` (and
per-tag `group_rewards` / `group_strict_rewards`). Unpickling an answer can run arbitrary code, so point this
client only at a server you run yourself on a network you trust.

Scores come back under our keys: `geneval` (the server's `scores`, its partial-credit reward unless only_strict)
and `geneval_strict` (its `strict_rewards`, GenEval's 0/1). Images travel as JPEG, as that server expects; the
prompts are not sent (the metadata carries what GenEval checks). Everything else — balancing, retries with
backoff, failure counts, never a default score — is RewardClient's.
"""

from __future__ import annotations

import asyncio
import io
import math
import pickle
from collections.abc import Sequence

import httpx
import numpy as np
from PIL import Image

from reward_service.client import RewardClient, RewardError
from reward_service.protocol import Scores

KEYS = {"geneval": "scores", "geneval_strict": "strict_rewards"}  # our score key -> the server's answer field


class FlowGrpoGenevalClient(RewardClient):
    SCORE_PATH = "/"

    def _encode(self, images: np.ndarray, prompts: list[str], metadata: list[dict],
                scorers: Sequence[str] | None) -> bytes:
        unknown = sorted(set(scorers or ()) - set(KEYS))
        if unknown:
            raise RewardError(f"the Flow-GRPO GenEval server scores only {sorted(KEYS)}, not {unknown}")
        if any(not m for m in metadata):
            raise RewardError("the Flow-GRPO GenEval server needs GenEval metadata for every image (tag, include, "
                              "...): train on a GenEval-format .jsonl prompt file")
        jpegs = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG")
            jpegs.append(buffer.getvalue())
        return pickle.dumps({"images": jpegs, "meta_datas": list(metadata), "only_strict": False})

    def _decode(self, content: bytes) -> Scores:
        try:
            answer = pickle.loads(content)  # noqa: S301 -- trusted servers only, see the module docstring
        except Exception as error:  # noqa: BLE001 -- any unpickling failure means an unusable answer
            raise ValueError(f"answer is not a pickled dict ({type(error).__name__})") from None
        if not isinstance(answer, dict) or any(field not in answer for field in KEYS.values()):
            raise ValueError(f"answer lacks {sorted(KEYS.values())}")
        scores: Scores = {}
        for key, field in KEYS.items():
            values = [float(v) for v in answer[field]]
            scores[key] = [v if math.isfinite(v) else None for v in values]
        return scores

    async def check_health(self, timeout_s: float = 10.0) -> dict[str, list[str]]:
        """That server has no health endpoint: any HTTP answer on its root path means it is up."""
        http = self._client()

        async def probe(url: str) -> str | None:
            try:
                await asyncio.wait_for(http.get(f"{url}/", timeout=timeout_s), timeout_s)
                return None
            except (httpx.TransportError, asyncio.TimeoutError) as e:
                return self._count_failure(url, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__,
                                           retryable=True)

        errors = dict(zip(self.urls, await asyncio.gather(*(probe(url) for url in self.urls)), strict=True))
        bad = {url: error for url, error in errors.items() if error is not None}
        if bad:
            raise RewardError("Flow-GRPO GenEval servers not reachable: "
                              + "; ".join(f"{u} ({e})" for u, e in bad.items()))
        return {url: sorted(KEYS) for url in self.urls}
