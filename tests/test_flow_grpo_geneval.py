"""Interop with the Flow-GRPO ecosystem's GenEval reward server (pickle over HTTP), against a local server that speaks
its protocol: a stand-in we wrote from that protocol, since the real one needs mmdet and detector weights. It decodes
the JPEGs and metadata as the real server does and answers with made-up but per-image distinct scores, so the test
checks the transport and the mapping of fields to our keys, not GenEval itself."""

import asyncio
import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from configs.load import ConfigError, load_config
from configs.schema import RewardConfig
from reward_service.client import RewardClient, RewardError
from reward_service.flow_grpo_geneval import FlowGrpoGenevalClient
from reward_service.replica import ServerThread


class GenevalPickleServer:
    """POST / with a pickled {images: [JPEG], meta_datas, only_strict} -> a pickled answer, as that server does."""

    def __init__(self):
        self.requests = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        if scope["method"] != "POST":
            return await self.reply(send, 200, b"geneval server", "text/plain")
        data = pickle.loads(body)
        images = [np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")) for jpeg in data["images"]]
        self.requests.append((images, data["meta_datas"], data["only_strict"]))
        scores = [float(im.mean()) / 255 for im in images]
        strict = [1.0 if m["tag"] == "single_object" else 0.0 for m in data["meta_datas"]]
        answer = {"scores": scores, "rewards": scores, "strict_rewards": strict,
                  "group_rewards": {"single_object": scores}, "group_strict_rewards": {"single_object": strict}}
        await self.reply(send, 200, pickle.dumps(answer), "application/octet-stream")

    @staticmethod
    async def reply(send, status, body, content_type):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode())]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def geneval_server():
    app = GenevalPickleServer()
    server = ServerThread(app)
    yield server.url, app
    server.stop()


def test_scores_come_back_under_our_keys(geneval_server):
    url, app = geneval_server
    client = RewardClient.from_config(RewardConfig(weights={"geneval": 1.0}, replicas=0, urls=(url,),
                                                   protocol="flow_grpo_geneval"))
    assert isinstance(client, FlowGrpoGenevalClient)
    images = np.stack([np.full((16, 16, 3), value, np.uint8) for value in (0, 100, 200)])
    metadata = [{"tag": "single_object", "include": [{"class": "circle", "count": 1}]},
                {"tag": "counting", "include": [{"class": "square", "count": 2}]},
                {"tag": "single_object", "include": [{"class": "triangle", "count": 1}]}]
    scores = client.score_sync(images, ["p"] * 3, metadata, scorers=["geneval"])
    assert scores["geneval_strict"] == [1.0, 0.0, 1.0]
    assert scores["geneval"] == pytest.approx([0.0, 100 / 255, 200 / 255], abs=2 / 255)  # JPEG, as that server gets
    sent_images, sent_metadata, only_strict = app.requests[-1]
    assert sent_metadata == metadata and only_strict is False and len(sent_images) == 3
    assert asyncio.run(client.check_health()) == {url: ["geneval", "geneval_strict"]}


def test_images_without_geneval_metadata_are_refused(geneval_server):
    client = FlowGrpoGenevalClient([geneval_server[0]])
    with pytest.raises(RewardError, match="needs GenEval metadata"):
        client.score_sync(np.zeros((1, 8, 8, 3), np.uint8), ["a photo"], [{}], scorers=["geneval"])


def test_config_keeps_the_pickle_protocol_to_external_geneval_servers(tiny_pipeline):
    base = [f"policy.pretrained={tiny_pipeline}", "reward.protocol=flow_grpo_geneval"]
    with pytest.raises(ConfigError, match="reward.replicas=0"):
        load_config("configs/tiny_cpu.yaml", base)
    cfg = load_config("configs/tiny_cpu.yaml", [*base, "reward.replicas=0", "reward.urls=[http://127.0.0.1:18085]",
                                                f"reward.weights={json.dumps({'geneval': 1.0})}"])
    assert cfg.reward.protocol == "flow_grpo_geneval"
