"""Operator command: the reward replica count of a running job (one started with reward.autoscale.enabled).

python -m deploy.scale_reward --address ADDR --run NAME [--replicas N | --auto]
  --replicas N  scale to N now (drained before removal) and hold N; --auto  scale by load again; neither: status.
"""

from __future__ import annotations

import argparse
import json
import sys

import ray

from deploy.reward_scaling import NAMESPACE, scaler_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.scale_reward", description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the job's Ray cluster, e.g. 10.0.0.1:6379 or auto")
    parser.add_argument("--run", required=True, help="the job's run.name")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--replicas", type=int, help="replica count to scale to and hold")
    action.add_argument("--auto", action="store_true", help="let the load decide again")
    args = parser.parse_args(argv)
    ray.init(address=args.address, namespace=NAMESPACE, logging_level="error", log_to_driver=False)
    try:
        scaler = ray.get_actor(scaler_name(args.run), namespace=NAMESPACE)
    except ValueError:
        print(f"error: no reward scaler for run {args.run!r} on {args.address}: is the job running, with "
              "reward.autoscale.enabled=true?", file=sys.stderr)
        return 2
    try:
        if args.replicas is not None:
            print(ray.get(scaler.set_replicas.remote(args.replicas)))
        elif args.auto:
            print(ray.get(scaler.resume_autoscaling.remote()))
        print(json.dumps(ray.get(scaler.status.remote())))
    except ray.exceptions.RayTaskError as error:
        print(f"error: {error.cause if isinstance(error.cause, ValueError) else error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
