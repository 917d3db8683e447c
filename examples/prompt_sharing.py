"""What sharing per-prompt statistics buys a fleet of rollout workers, on CPU, no model needed.

A pool of prompts with hidden success rates (a third nearly always solved, a third nearly never,
a third in between); N worker processes each draw rounds of prompts and roll out a group of G
pass/fail samples per prompt. Three ways to choose the prompts:

- ``none``: draw uniformly, no filtering;
- ``local``: each worker skips prompts its own tracker has seen only pass or only fail (a
  ``PromptStats`` in a namespace of its own: a per-process tracker, as trainers keep today);
- ``shared``: the same filter against one ``PromptStats`` every worker updates.

Reported (and plotted with ``--plot FILE.png``, the ``[plot]`` extra): the fraction of rollouts
spent on zero-variance groups (all G samples equal: no learning signal under a group baseline),
and the mean absolute error of the estimated pass rates over the whole pool (a prompt not seen
counts as 0.5), as rollouts accumulate.

Workers are processes on the Redis at ``--url`` (default ``$SHARED_REWARDNORM_URL``, else
redis://127.0.0.1:6379/0; a random namespace, deleted afterwards). With ``--embedded`` or no
reachable server they are threads on the embedded store, which the threads of one process share.

    python examples/prompt_sharing.py --plot prompt_sharing.png
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from shared_rewardnorm import PromptStats

STRATEGIES = ("none", "local", "shared")


@dataclass(frozen=True)
class Setup:
    prompts: int = 300
    workers: int = 4
    rounds: int = 50
    per_round: int = 8  # prompts per round per worker
    group: int = 8  # rollouts per prompt
    checkpoints: int = 10
    seed: int = 0


def hidden_rates(setup: Setup) -> list[float]:
    """Each prompt's true success rate: solved, hopeless or in between, in equal thirds."""
    rng = random.Random(setup.seed)
    rates = []
    for index in range(setup.prompts):
        kind = index % 3
        rates.append(rng.uniform(0.97, 1.0) if kind == 0 else rng.uniform(0.0, 0.03) if kind == 1
                     else rng.uniform(0.1, 0.9))
    return rates


def run_worker(url: str | None, namespace: str, strategy: str, worker: int, setup: Setup) -> list[list[float]]:
    """One worker's rounds; returns its checkpoints: [rollouts, zero-variance rollouts, error]."""
    rates = hidden_rates(setup)
    rng = random.Random(setup.seed * 1000 + worker)
    space = namespace if strategy == "shared" else f"{namespace}-w{worker}"
    ids = [str(index) for index in range(setup.prompts)]
    tracker = PromptStats("pool", url, namespace=space)
    rollouts = zero_variance = 0
    points = []
    every = max(1, setup.rounds // setup.checkpoints)
    for round_ in range(setup.rounds):
        candidates = [rng.choice(ids) for _ in range(setup.per_round * 4)]
        if strategy == "none":
            chosen = candidates[:setup.per_round]
        else:  # keep unknown prompts and those seen both pass and fail; skip the others before rolling out
            kept = tracker.select(candidates, low=0.0, high=1.0)
            chosen = (kept + [c for c in candidates if c not in kept])[:setup.per_round]
        batch_ids, rewards = [], []
        for prompt_id in chosen:
            outcomes = [float(rng.random() < rates[int(prompt_id)]) for _ in range(setup.group)]
            zero_variance += setup.group if len(set(outcomes)) == 1 else 0
            rollouts += setup.group
            batch_ids += [prompt_id] * setup.group
            rewards += outcomes
        tracker.update(batch_ids, rewards, batch_id=f"{worker}-{round_}")
        if (round_ + 1) % every == 0:
            estimates = tracker.get(ids)
            error = sum(abs((0.5 if info is None else info.mean) - rate)
                        for info, rate in zip(estimates, rates, strict=True)) / len(ids)
            points.append([rollouts, zero_variance, error])
    tracker.close()
    return points


def _process_main(url: str | None, namespace: str, strategy: str, worker: int, setup: Setup, results: Any) -> None:
    results.put((worker, run_worker(url, namespace, strategy, worker, setup)))


def run_strategy(url: str | None, namespace: str, strategy: str, setup: Setup) -> list[list[float]]:
    """Every worker's checkpoints combined: fleet rollouts, zero-variance fraction, mean error."""
    per_worker: dict[int, list[list[float]]] = {}
    if url is None:  # threads sharing the embedded store
        def target(worker: int) -> None:
            per_worker[worker] = run_worker(None, namespace, strategy, worker, setup)
        threads = [threading.Thread(target=target, args=(worker,)) for worker in range(setup.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        processes = [context.Process(target=_process_main, args=(url, namespace, strategy, worker, setup, results))
                     for worker in range(setup.workers)]
        for process in processes:
            process.start()
        for _ in processes:
            worker, points = results.get(timeout=600)
            per_worker[worker] = points
        for process in processes:
            process.join()
    combined = []
    for index in range(len(per_worker[0])):
        rows = [per_worker[worker][index] for worker in range(setup.workers)]
        rollouts = sum(row[0] for row in rows)
        combined.append([rollouts, sum(row[1] for row in rows) / rollouts, sum(row[2] for row in rows) / len(rows)])
    return combined


def measure(setup: Setup = Setup(), url: str | None = None) -> dict[str, list[list[float]]]:
    """Each strategy's curve: [fleet rollouts, zero-variance fraction so far, mean abs error]."""
    namespace = f"prompt-sharing-{uuid.uuid4().hex[:8]}"
    try:
        return {strategy: run_strategy(url, f"{namespace}-{strategy}", strategy, setup) for strategy in STRATEGIES}
    finally:
        if url is not None:
            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


def plot(curves: dict[str, list[list[float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for strategy, points in curves.items():
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=strategy)
        right.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=strategy)
    left.set(xlabel="rollouts (whole fleet)", ylabel="fraction on zero-variance groups", title="Wasted rollouts")
    right.set(xlabel="rollouts (whole fleet)", ylabel="mean |estimated - true pass rate|",
              title="Pass-rate estimates (per worker)")
    for axes in (left, right):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _url(args: argparse.Namespace) -> str | None:
    if args.embedded:
        return None
    url = args.url or os.environ.get("SHARED_REWARDNORM_URL") or "redis://127.0.0.1:6379/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError:
        print(f"no Redis at {url}: threads on the embedded store instead")
        return None
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--url")
    parser.add_argument("--embedded", action="store_true", help="threads on the embedded store")
    parser.add_argument("--workers", type=int, default=Setup.workers)
    parser.add_argument("--rounds", type=int, default=Setup.rounds)
    parser.add_argument("--plot", metavar="FILE.png")
    args = parser.parse_args(argv)
    setup = Setup(workers=args.workers, rounds=args.rounds)
    url = _url(args)
    curves = measure(setup, url)
    print(f"{setup.workers} workers, {setup.prompts} prompts, {setup.rounds} rounds of {setup.per_round} prompts x "
          f"{setup.group} rollouts ({'processes on ' + url if url else 'threads on the embedded store'})")
    print(f"{'strategy':>8}  {'zero-variance rollouts':>22}  {'pass-rate error':>15}  (at the end)")
    for strategy, points in curves.items():
        print(f"{strategy:>8}  {points[-1][1]:>22.1%}  {points[-1][2]:>15.3f}")
    if args.plot:
        plot(curves, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
