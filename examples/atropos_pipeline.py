"""Atropos's whole pipeline on one machine, with shared reward normalization (needs the ``atropos``
extra; runs offline in about a minute):

    python examples/atropos_pipeline.py [--redis-url redis://127.0.0.1:6379/0] [--batches 6]

What runs, each piece the real one except the policy:

* Atropos's API server (its ``run-api`` command) on a free loopback port;
* a stand-in for the inference server: a small OpenAI-compatible HTTP server (``/v1/chat/
  completions``) answering with random words, here in a thread;
* two env processes, each ``python examples/atropos_env.py serve ...`` (the toy env with the
  mixin), normalizing their groups' scores against one set of shared statistics;
* a trainer: it registers with the API server and pulls batches, as a real trainer does.

It prints the z-scores the trainer received, which env sent each group, and checks the shared
count against the scores the envs normalized: every group the inference stand-in answered, including
those ``BaseEnv`` then drops because all their scores are equal (they are real rewards of the
env, so they count). The statistics live under a random namespace, reset at the end (or under
``--namespace``, left for you).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES))

from atropos_env import QUESTIONS, score  # noqa: E402
from offline_models import WORDS, save_word_tokenizer  # noqa: E402

GROUP_SIZE = 4
BATCH_SIZE = 8  # sequences per trainer batch: two groups
MAX_TOKEN_LEN = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the inference stand-in ---------------------------------------------------------------------

class StubInference(ThreadingHTTPServer):
    """An OpenAI-compatible chat-completions server on loopback: ``n`` replies of random words
    (the right answer half the time); one request in five gets ``n`` identical replies, whose
    scores are all equal (``BaseEnv`` drops such groups after the mixin has counted them).
    Atropos's health checks (a one-token "hi") are answered and not recorded. ``pause()`` stops
    answering groups (their requests wait until shutdown), so the pipeline can go quiet."""

    daemon_threads = True

    def __init__(self, seed: int = 0, delay: float = 0.1) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.delay = delay
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.answered: list[dict[str, Any]] = []  # {"question", "replies"} per group request
        self.paused = threading.Event()
        self.closing = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def replies(self, question: str, n: int) -> list[str]:
        answer = dict(QUESTIONS)[question]
        with self.lock:
            def reply() -> str:
                first = answer if self.rng.random() < 0.5 else self.rng.choice(WORDS)
                return " ".join([first, *self.rng.choices(WORDS, k=self.rng.randrange(0, 6))])
            replies = [reply()] * n if self.rng.random() < 0.2 else [reply() for _ in range(n)]
            self.answered.append({"question": question, "replies": replies})
        return replies

    def pause(self) -> None:
        self.paused.set()

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()


class _StubHandler(BaseHTTPRequestHandler):
    server: StubInference

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self.path.endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        question = body["messages"][-1]["content"]
        n = int(body.get("n") or 1)
        if question not in dict(QUESTIONS):  # a health check
            replies = ["yes"] * n
        else:
            if self.server.paused.is_set():
                self.server.closing.wait()
                self._send(503, {"error": {"message": "paused"}})
                return
            time.sleep(self.server.delay)  # an inference server takes a while to answer
            replies = self.server.replies(question, n)
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "toy"),
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None} for i, text in enumerate(replies)],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the env gave up waiting
            self.wfile.write(data)


# --- the API server and the trainer -------------------------------------------------------------

def http(method: str, url: str, payload: Any = None, timeout: float = 10) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def answers(url: str) -> bool:
    try:
        http("GET", url, timeout=2)
    except OSError:
        return False
    return True


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not answers(url):
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before answering")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered at {url} within {timeout} s")
        time.sleep(0.2)


class Trainer:
    """What a trainer does with Atropos's API server: register, then pull batches."""

    def __init__(self, api: str) -> None:
        self.api = api
        http("POST", f"{api}/register", {"wandb_group": "example", "wandb_project": "shared-rewardnorm",
                                         "batch_size": BATCH_SIZE, "max_token_len": MAX_TOKEN_LEN,
                                         "checkpoint_dir": "", "save_checkpoint_interval": 0, "starting_step": 0,
                                         "num_steps": 1000})
        http("GET", f"{api}/batch")  # the first pull starts the run: envs may register from now on

    def pull(self, batches: int, timeout: float,
             until: Callable[[], bool] | None = None) -> list[list[dict[str, Any]]]:
        """At least ``batches`` batches, and more until ``until()`` holds (if given)."""
        got: list[list[dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while len(got) < batches or (until is not None and not until()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the trainer got {len(got)} of {batches} batches within {timeout} s")
            batch = http("GET", f"{self.api}/batch")["batch"]
            if batch:
                got.append(batch)
            else:
                time.sleep(0.2)
        return got

    def drain(self) -> list[list[dict[str, Any]]]:
        """Every full batch the API server can still make (it cuts all it can at each pull
        and hands them out one per pull)."""
        got = []
        while batch := http("GET", f"{self.api}/batch")["batch"]:
            got.append(batch)
        return got

    def wait_for_envs(self, count: int, timeout: float) -> None:
        """Until ``count`` envs have registered with the API server (its ``/status-env`` answers
        for env id ``count - 1``), so that every env takes part however slowly it started."""
        deadline = time.monotonic() + timeout
        while not self._registered(count - 1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} envs registered within {timeout} s")
            time.sleep(0.2)

    def _registered(self, env_id: int) -> bool:
        try:
            http("GET", f"{self.api}/status-env", {"env_id": env_id})
        except (OSError, ValueError):  # not registered yet: the server answers 500
            return False
        return True

    def queued(self) -> int:
        """Groups the API server holds that no batch has taken yet."""
        return int(http("GET", f"{self.api}/status")["queue_size"])


# --- the pipeline -------------------------------------------------------------------------------

@dataclass
class PipelineRun:
    batches: list[list[dict[str, Any]]]  # what the trainer pulled, the drained batches last
    answered: list[dict[str, Any]]  # every group request the inference stand-in answered
    queued: int  # groups left in the API server's queue
    env_logs: list[str] = field(default_factory=list)


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in started:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Wait for a process told to stop (SIGINT), killing it after 10 s."""
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_pipeline(redis_url: str | None, namespace: str, batches: int, workdir: str, *,
                 env_script: Path = EXAMPLES / "atropos_env.py", env_vars: dict[str, str] | None = None,
                 quiet_timeout: float = 60, until: Callable[[], bool] | None = None) -> PipelineRun:
    """Start everything, let the trainer pull ``batches`` batches, then pause the inference
    stand-in and wait until every group it answered has gone through an env (the envs'
    handlers have finished), so that what the envs normalized is exactly what was answered."""
    tokenizer = save_word_tokenizer(Path(workdir) / "tokenizer")
    stub = StubInference(seed=1)
    threading.Thread(target=stub.serve_forever, name="stub-inference", daemon=True).start()
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    run_api = Path(sys.executable).with_name("run-api")
    logs = [Path(workdir) / f"env{i}.log" for i in range(2)]
    env = {**os.environ, **(env_vars or {}), "PYTHONUNBUFFERED": "1"}
    try:
        with processes() as started:
            started.append(subprocess.Popen([str(run_api), "--host", "127.0.0.1", "--port", str(api_port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for(f"{api}/", started[0])
            trainer = Trainer(api)
            for log in logs:
                with log.open("wb") as out:
                    started.append(subprocess.Popen(
                        [sys.executable, str(env_script), "serve",
                         "--env.rollout_server_url", api, "--env.tokenizer_name", tokenizer,
                         "--env.reward_normalization", "zscore", "--env.reward_norm_namespace", namespace,
                         *(["--env.reward_norm_redis_url", redis_url] if redis_url else []),
                         "--openai.base_url", stub.url, "--openai.api_key", "x", "--openai.model_name", "toy",
                         # BaseEnv cancels its running workers whenever this many batches wait in
                         # the API server's queue; a worker cancelled while its merge is in flight
                         # may be counted without its group being sent. A short run with a stand-in
                         # policy outpaces this trainer, so the limit is lifted here.
                         "--env.max_batches_offpolicy", "1000"],
                        stdout=out, stderr=subprocess.STDOUT, env=env))
            trainer.wait_for_envs(len(logs), timeout=240)
            pulled = trainer.pull(batches, timeout=240, until=until)
            stub.pause()
            # Quiet: no group answered but not yet through its env's handler. The envs' handlers
            # post every group they keep to the API server; wait until the answered count stops
            # growing and the queue stops changing.
            last, steady_since = (-1, -1), time.monotonic()
            deadline = time.monotonic() + quiet_timeout
            while time.monotonic() - steady_since < 3:
                if time.monotonic() > deadline:
                    raise TimeoutError("the pipeline did not go quiet")
                now = (len(stub.answered), trainer.queued())
                if now != last:
                    last, steady_since = now, time.monotonic()
                time.sleep(0.2)
            for process in started[1:]:
                if process.poll() is not None:
                    raise RuntimeError(f"env exited with {process.returncode}: see {process.args}")
            pulled += trainer.drain()
            queued = trainer.queued()
    finally:
        stub.close()
    return PipelineRun(pulled, list(stub.answered), queued, [log.read_text(errors="replace") for log in logs])


def raw_scores(group: dict[str, Any], tokenizer: Any) -> list[float]:
    """A received group's raw scores, recomputed from its tokens (prompt and reply)."""
    out = []
    for tokens in group["tokens"]:
        words = tokenizer.decode(tokens).split()
        question = next(q for q, _ in QUESTIONS if words[:len(q.split())] == q.split())
        out.append(score(" ".join(words[len(question.split()):]), dict(QUESTIONS)[question]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None, help="default: $SHARED_REWARDNORM_URL; needed by two processes")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--namespace", default=None,
                        help="key namespace (its keys are then yours to delete); default: a random one, reset "
                             "at the end")
    args = parser.parse_args()
    url = args.redis_url or os.environ.get("SHARED_REWARDNORM_URL")
    if url is None:
        raise SystemExit("two env processes share the statistics: give --redis-url (or $SHARED_REWARDNORM_URL)")
    from transformers import AutoTokenizer

    from shared_rewardnorm import StatsStore

    owned = args.namespace is None
    namespace = args.namespace or f"atropos-pipeline-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as workdir:
        run = run_pipeline(url, namespace, args.batches, workdir)
        tokenizer = AutoTokenizer.from_pretrained(str(Path(workdir) / "tokenizer"))
        for number, batch in enumerate(run.batches):
            for group in batch:
                raws = raw_scores(group, tokenizer)
                print(f"batch {number}  env {group.get('env_id')}  raw {' '.join(f'{x:+.2f}' for x in raws)}  ->  "
                      f"z {' '.join(f'{x:+.2f}' for x in group['scores'])}")
    with StatsStore(url, namespace) as store:
        stats = store.get("toy_arithmetic")
        normalized = GROUP_SIZE * len(run.answered)
        answers = dict(QUESTIONS)
        equal = sum(len({score(r, answers[a["question"]]) for r in a["replies"]}) == 1 for a in run.answered)
        print(f"\ngroups answered by the inference stand-in: {len(run.answered)} ({equal} with all scores equal: "
              f"counted, then dropped by BaseEnv)")
        print(f"groups the trainer received: {sum(len(b) for b in run.batches)}, left in the API server's queue "
              f"(less than a batch): {run.queued}")
        print(f"shared count {stats.count} (scores the envs normalized: {normalized}), mean {stats.mean:+.4f}, "
              f"std {stats.std:.4f}")
        if owned:  # the statistics; the batch records expire after the store's batch_record_ttl
            store.reset("toy_arithmetic")
    if stats.count != normalized:
        raise SystemExit("the shared count does not match the scores normalized")


if __name__ == "__main__":
    main()
