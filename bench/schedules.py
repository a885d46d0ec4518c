"""The overlapped schedule against the synchronous one (the default), trained for real: two `deploy.train.train` runs on
configs/tiny_cpu.yaml (same seed) with the stages measured alone in between. Both the overlap figures and the
learning-speed curves come from these runs, so the bench pays for them once.
"""

from __future__ import annotations

from bench import learning_speed, overlap
from bench.context import BenchContext, ray_session
from deploy.train import train


def measure(ctx: BenchContext) -> dict[str, dict]:
    records, alone = {}, {}
    for side, extra in (("overlapped", overlap.OVERLAPPED), ("synchronous", overlap.SYNCHRONOUS)):
        cfg = ctx.run_config(f"schedule_{side}", f"run.num_updates={ctx.learning_updates}",
                             f"eval.every={ctx.learning_eval_every}", *extra)
        with ray_session():
            train(cfg)
        records[side] = overlap.read_records(cfg)
        if not alone:  # between the two runs, so drifting load hits both alike
            alone = overlap.stages_alone(ctx)
    return {"overlap": overlap.section(cfg, records, alone), "learning": learning_speed.section(ctx, records)}
