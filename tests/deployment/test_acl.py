"""Least privilege: the ACL users of docs/operations/security.md, checked on a private password-protected
server.

The rule lines are read from docs/operations/security.md (both the ``ACL SETUSER`` and the ``users.acl``
forms) and compared with ``EXPECTED`` below, so the document and this test cannot drift apart.
For each user the test shows that

- the user can do its whole job with exactly these rules (and ``ACL LOG`` stays empty),
- every command rule is needed: without it the job fails, and ``ACL LOG`` names that command,
- commands and keys outside the rules are refused with NOPERM, inside scripts too,
- a wrong password fails with ``AuthenticationError``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from shared_rewardnorm import (
    AsyncStatsStore,
    RunningStats,
    SharedRewardNormalizer,
    StatsStore,
    WrongTypeError,
)
from shared_rewardnorm._redis.scripts import function_library, library_name
from tests.support import REPO
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer

pytestmark = pytest.mark.own_server

DOC = REPO / "docs" / "operations" / "security.md"
NS = "rewardnorm"
ADMIN_PASSWORD = "admin-password"

#: The rules each user needs, as found by experiment (see docs/operations/security.md).
EXPECTED = {
    "trainer":
        "~rewardnorm:* resetchannels -@all +evalsha +eval +hmget +hgetall +hset +get +set +del +type +scan +time",
    "trainer-fn":
        "~rewardnorm:* resetchannels -@all +fcall +hmget +hgetall +hset +get +set +del +type +scan +time",
    "dashboard": "%R~rewardnorm:* resetchannels -@all +hgetall +scan",
}
#: The ``functions=`` mode each writing user runs with.
FUNCTIONS = {"trainer": False, "trainer-fn": True}

_SETUSER = re.compile(r"^ACL SETUSER (\S+) reset on >(\S+) (.+)$", re.MULTILINE)
_FILE_USER = re.compile(r"^user (\S+) on >(\S+) (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class DocUser:
    name: str
    password: str
    rules: str


def doc_users(pattern: re.Pattern[str]) -> dict[str, DocUser]:
    text = DOC.read_text(encoding="utf-8")
    return {m[1]: DocUser(m[1], m[2], m[3].strip()) for m in pattern.finditer(text)}


# --- the server -----------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    passwords: dict[str, str]

    def url(self, user: str, password: str | None = None, query: str = "") -> str:
        secret = self.passwords[user] if password is None else password
        return f"redis://{user}:{secret}@127.0.0.1:{self.port}/0{query}"

    def admin(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=ADMIN_PASSWORD)

    @property
    def admin_url(self) -> str:
        return f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{self.port}/0"


def acl_log(admin: redis.Redis) -> set[tuple[str, str, str]]:
    """(reason, context, object) of every refusal since the last ``ACL LOG RESET``."""
    return {(e[b"reason"].decode(), e[b"context"].decode(), e[b"object"].decode())
            for e in admin.execute_command("ACL", "LOG")}


def load_library(server: Server) -> None:
    store = StatsStore(server.admin_url, NS)
    try:
        store.load_functions()
    finally:
        store.client.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A private server; the default user creates the users of the doc with ``ACL SETUSER``,
    then gets a password (``requirepass``, as ``--requirepass`` would set at start)."""
    users = doc_users(_SETUSER)
    with RedisServer(tmp_path_factory.mktemp("acl"), NO_PERSISTENCE) as process:
        admin = redis.Redis(port=process.port)
        try:
            for user in users.values():
                admin.execute_command("ACL", "SETUSER", user.name, "reset", "on", f">{user.password}",
                                      *user.rules.split())
            admin.config_set("requirepass", ADMIN_PASSWORD)
        finally:
            admin.close()
        srv = Server(process.port, {name: user.password for name, user in users.items()})
        admin = srv.admin()
        store = StatsStore(srv.admin_url, NS)
        try:
            store.update("gsm8k", [1.0, 2.0, 3.0])
            store.update("math", [0.0, 1.0])
            admin.set(f"{NS}:{{wrongtype}}", "a string, not a stats hash")
            admin.set("other:secret", "not yours")
            admin.hset("rewardnormx:{gsm8k}", mapping={"count": "1", "mean": "1", "m2": "0", "min": "1", "max": "1"})
            store.load_functions()
        finally:
            store.client.close()
            admin.close()
        yield srv


@pytest.fixture
def admin(server: Server) -> Iterator[redis.Redis]:
    client = server.admin()
    client.execute_command("ACL", "LOG", "RESET")
    yield client
    client.close()


@pytest.fixture
def no_library(server: Server, admin: redis.Redis) -> Iterator[None]:
    """No Function library on the server during the test (it is loaded again afterwards)."""
    admin.function_flush()
    yield
    load_library(server)


# --- the users' jobs ------------------------------------------------------------------------


async def _async_job(url: str, functions: bool | None) -> None:
    store = AsyncStatsStore(url, NS, functions=functions, retry=None)
    try:
        assert (await store.update("gsm8k", [4.0])).count >= 4
        assert (await store.get("gsm8k")).count >= 4
        assert "gsm8k" in await store.envs()
    finally:
        await store.aclose()


def trainer_job(url: str, functions: bool | None) -> None:
    """Everything a trainer does: normalize, read, list, checkpoint, reset, sync and asyncio."""
    store = StatsStore(url, NS, functions=functions, retry=None)
    try:
        norm = SharedRewardNormalizer("gsm8k", store, warmup=2)
        assert len(norm.normalize([1.0, 2.0, 3.0])) == 3
        assert norm.count >= 3
        assert store.update("math", [1, 2, 3]).count >= 3
        assert store.get("math").count >= 3
        assert set(store.get_many(["gsm8k", "math", "absent"])) == {"gsm8k", "math", "absent"}
        assert {"gsm8k", "math"} <= set(store.envs())
        assert {"gsm8k", "math"} <= set(store.all())
        assert store.aggregate().count >= 6
        norm.load_state_dict(norm.state_dict())
        store.set("scratch", RunningStats.from_values([1.0, 5.0]))
        store.reset("scratch")
        with pytest.raises(WrongTypeError):
            store.update("wrongtype", [1.0])
    finally:
        store.client.close()
    asyncio.run(_async_job(url, functions))


def dashboard_job(url: str) -> None:
    """Everything a read-only dashboard does."""
    store = StatsStore(url, NS, retry=None)
    try:
        assert store.get("gsm8k").count >= 3
        assert set(store.get_many(["gsm8k", "math"])) == {"gsm8k", "math"}
        assert {"gsm8k", "math"} <= set(store.envs())
        assert {"gsm8k", "math"} <= set(store.all())
        assert store.aggregate().count >= 5
        assert "reward_norm/gsm8k/mean" in store.metrics()
        assert "gsm8k" in store.export()["envs"]
    finally:
        store.client.close()


def job_of(user: str) -> Callable[[str], None]:
    if user == "dashboard":
        return dashboard_job
    return lambda url: trainer_job(url, FUNCTIONS[user])


# --- the document ---------------------------------------------------------------------------


def test_doc_has_the_rules_in_both_syntaxes() -> None:
    setuser, file_users = doc_users(_SETUSER), doc_users(_FILE_USER)
    assert {name: user.rules for name, user in setuser.items()} == EXPECTED
    file_users.pop("default")
    assert file_users == setuser


def test_users_acl_file_makes_the_same_users_and_functions_survive_a_restart(
        server: Server, admin: redis.Redis, tmp_path: Path) -> None:
    """The doc's ``users.acl`` lines load into users identical to the ``ACL SETUSER`` ones; a
    library loaded once survives a restart (RDB), so ``trainer-fn`` needs no reload."""
    text = DOC.read_text(encoding="utf-8")
    lines = [m[0] for m in _FILE_USER.finditer(text) if m[1] != "default"]
    acl_file = tmp_path / "users.acl"
    # The harness pings without a password while the server starts; the admin password is set below.
    acl_file.write_text("user default on nopass ~* &* +@all\n" + "\n".join(lines) + "\n", encoding="utf-8")
    args = ["--aclfile", str(acl_file), "--save", "3600 1", "--appendonly", "no"]

    def users_of(client: redis.Redis) -> dict[str, set[str]]:
        """Each user's ACL LIST tokens, less ``sanitize-payload``: ACL SETUSER's ``reset`` sets it,
        and it only concerns RESTORE, which none of these users may run."""
        lines = (line.decode() if isinstance(line, bytes) else line for line in client.acl_list())
        return {line.split()[1]: set(line.split()[2:]) - {"sanitize-payload"}
                for line in lines if not line.startswith("user default ")}

    with RedisServer(tmp_path, args) as first:
        other = redis.Redis(port=first.port)
        try:
            assert users_of(other) == users_of(admin)
        finally:
            other.close()
        load = StatsStore(first.url, NS)
        try:
            load.load_functions()
        finally:
            load.client.close()
        url = f"redis://trainer-fn:{server.passwords['trainer-fn']}@127.0.0.1:{first.port}/0"
        store = StatsStore(url, NS, functions=True, retry=None)
        try:
            assert store.update("gsm8k", [1.0, 2.0]).count == 2
        finally:
            store.client.close()
    with RedisServer(tmp_path, args) as second:  # same dir: the RDB saved at shutdown
        url = f"redis://trainer-fn:{server.passwords['trainer-fn']}@127.0.0.1:{second.port}/0"
        store = StatsStore(url, NS, functions=True, retry=None)
        try:
            assert store.update("gsm8k", [3.0]).count == 3
        finally:
            store.client.close()


# --- each user can do its job with its rules ------------------------------------------------


def test_trainer_with_evalsha(server: Server, admin: redis.Redis) -> None:
    admin.script_flush()  # so that the first EVALSHA gets NOSCRIPT and the store sends EVAL
    trainer_job(server.url("trainer"), functions=False)
    assert acl_log(admin) == set()


def test_trainer_default_mode_without_library(server: Server, admin: redis.Redis, no_library: None) -> None:
    """``functions=None`` tries FCALL, is refused, and falls back to EVALSHA for good."""
    admin.script_flush()
    trainer_job(server.url("trainer"), functions=None)
    norm = SharedRewardNormalizer("gsm8k", server.url("trainer"), namespace=NS)  # URL straight in
    try:
        assert len(norm.normalize([0.5, 1.5])) == 2
    finally:
        norm.store.client.close()
    # The only refusals: one FCALL per store before it switched.
    assert acl_log(admin) == {("command", "toplevel", "fcall")}


def test_trainer_default_mode_with_library_loaded(server: Server, admin: redis.Redis) -> None:
    """A ``trainer`` is refused FCALL even when the library is there, and falls back."""
    assert library_name() in repr(admin.function_list())  # FUNCTION LIST's reply shape varies by RESP version
    trainer_job(server.url("trainer"), functions=None)
    assert acl_log(admin) == {("command", "toplevel", "fcall")}


def test_trainer_with_functions(server: Server, admin: redis.Redis) -> None:
    trainer_job(server.url("trainer-fn"), functions=True)
    assert acl_log(admin) == set()


def test_dashboard(server: Server, admin: redis.Redis) -> None:
    dashboard_job(server.url("dashboard"))
    dashboard_job(server.url("dashboard", query="?protocol=2"))  # AUTH instead of HELLO 3 AUTH
    assert acl_log(admin) == set()


def test_dashboard_cli_stats(server: Server, admin: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("shared_rewardnorm.cli") is None:
        pytest.skip("shared_rewardnorm has no cli module")
    cli = importlib.import_module("shared_rewardnorm.cli")
    url = server.url("dashboard")
    # exit 1: the key of another type the fixture planted is named (the dashboard may read it)
    assert cli.main(["--url", url, "--namespace", NS, "stats"]) == 1
    shown = capsys.readouterr()
    table = shown.out
    assert "gsm8k" in table and "math" in table and "aggregate" in table
    assert "env 'wrongtype'" in shown.err and "holds a non-hash value" in shown.err
    assert cli.main(["--url", url, "--namespace", NS, "stats", "--json", "gsm8k"]) == 0
    assert '"gsm8k"' in capsys.readouterr().out
    assert acl_log(admin) == set()


# --- ... and needs every one of them ---------------------------------------------------------


_NEEDED = [(user, rule) for user, rules in EXPECTED.items() for rule in rules.split() if rule.startswith("+")]


@pytest.mark.parametrize(("user", "rule"), _NEEDED, ids=[f"{u}-{r[1:]}" for u, r in _NEEDED])
def test_every_command_rule_is_needed(server: Server, admin: redis.Redis, user: str, rule: str) -> None:
    rules = EXPECTED[user].split()
    rules.remove(rule)
    probe = f"probe-{user}"
    admin.execute_command("ACL", "SETUSER", probe, "reset", "on", ">probe-password", *rules)
    admin.script_flush()  # else a cached script would hide a missing EVAL
    admin.execute_command("ACL", "LOG", "RESET")
    try:
        with pytest.raises(ResponseError):
            job_of(user)(server.url(probe, "probe-password"))
        refused = {obj for reason, _, obj in acl_log(admin) if reason == "command"}
        assert rule[1:] in refused
    finally:
        admin.execute_command("ACL", "DELUSER", probe)


# --- everything else is refused -------------------------------------------------------------


_EVERYONE_REFUSED = [
    ("FLUSHALL",), ("FLUSHDB",), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("CONFIG", "SET", "save", ""),
    ("ACL", "SETUSER", "intruder", "on", ">x", "~*", "+@all"), ("FUNCTION", "FLUSH"), ("SCRIPT", "FLUSH"),
    ("SCRIPT", "LOAD", "return 1"), ("EVAL_RO", "return 1", "0"), ("CLIENT", "LIST"), ("INFO",),
]


@pytest.mark.parametrize("user", sorted(EXPECTED))
def test_commands_outside_the_rules_are_refused(server: Server, user: str) -> None:
    client = redis.Redis.from_url(server.url(user))
    try:
        for command in _EVERYONE_REFUSED:
            with pytest.raises(NoPermissionError, match="no permissions to run"):
                client.execute_command(*command)
        with pytest.raises(NoPermissionError, match="no permissions to run"):
            client.function_load(function_library(), replace=True)
        # Keys outside ~rewardnorm:*, including another namespace that merely starts the same.
        for key in ("other:secret", "rewardnormx:{gsm8k}"):
            with pytest.raises(NoPermissionError, match="no permissions to access"):
                client.hgetall(key)
    finally:
        client.close()
    for namespace in ("other", "rewardnormx"):
        store = StatsStore(server.url(user), namespace, functions=FUNCTIONS.get(user), retry=None)
        try:
            with pytest.raises(NoPermissionError, match="no permissions to access"):
                store.get("gsm8k")
            if user != "dashboard":
                with pytest.raises(NoPermissionError, match="no permissions to access"):
                    store.update("gsm8k", [1.0])
        finally:
            store.client.close()


def test_scan_lists_names_outside_the_key_pattern(server: Server) -> None:
    """As docs/operations/security.md warns: SCAN is not filtered by key patterns (names only, no values)."""
    client = redis.Redis.from_url(server.url("dashboard"))
    try:
        assert b"other:secret" in set(client.scan_iter(match="*"))
        with pytest.raises(NoPermissionError):
            client.get("other:secret")
    finally:
        client.close()


def test_trainer_can_run_any_lua_but_it_runs_with_the_trainer_acl(server: Server, admin: redis.Redis) -> None:
    """EVAL runs arbitrary Lua, but every redis.call in it is checked against the caller's ACL:
    no other commands, no other keys."""
    client = redis.Redis.from_url(server.url("trainer"))
    try:
        assert client.eval("return 6 * 7", 0) == 42  # arbitrary code runs
        with pytest.raises(ResponseError, match="can't run this command"):
            client.eval("return redis.call('FLUSHALL')", 0)
        with pytest.raises(ResponseError, match=r"no permissions to access|can't access"):
            client.eval("return redis.call('GET', 'other:secret')", 0)  # undeclared key
        with pytest.raises(NoPermissionError, match="no permissions to access"):
            client.eval("return redis.call('GET', KEYS[1])", 1, "other:secret")  # declared: refused up front
    finally:
        client.close()
    assert admin.get("other:secret") == b"not yours"
    assert admin.exists(f"{NS}:{{gsm8k}}")
    assert {(reason, context) for reason, context, _ in acl_log(admin)} == {("command", "lua"), ("key", "lua"),
                                                                           ("key", "toplevel")}


def test_functions_trainer_cannot_run_its_own_lua(server: Server) -> None:
    client = redis.Redis.from_url(server.url("trainer-fn"))
    try:
        for command in [("EVAL", "return 1", "0"),
                        ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
                        ("FUNCTION", "LOAD", "#!lua name=mine\nredis.register_function('f', function() return 1 end)"),
                        ("FUNCTION", "DELETE", library_name())]:
            with pytest.raises(NoPermissionError, match="no permissions to run"):
                client.execute_command(*command)
    finally:
        client.close()
    store = StatsStore(server.url("trainer-fn"), NS, functions=False, retry=None)
    try:
        with pytest.raises(NoPermissionError, match="'evalsha'"):
            store.update("gsm8k", [1.0])
    finally:
        store.client.close()


def test_dashboard_cannot_write(server: Server, admin: redis.Redis) -> None:
    before = admin.hgetall(f"{NS}:{{gsm8k}}")
    norm = SharedRewardNormalizer("gsm8k", server.url("dashboard"), namespace=NS)
    try:
        with pytest.raises(NoPermissionError, match="'evalsha'"):  # after FCALL was refused too
            norm.normalize([1.0])
    finally:
        norm.store.client.close()
    for functions in (True, False):
        store = StatsStore(server.url("dashboard"), NS, functions=functions, retry=None)
        try:
            with pytest.raises(NoPermissionError):
                store.update("gsm8k", [1.0])
            with pytest.raises(NoPermissionError):
                store.reset("gsm8k")
        finally:
            store.client.close()
    client = redis.Redis.from_url(server.url("dashboard"))
    try:
        with pytest.raises(NoPermissionError, match="no permissions to run"):
            client.hset(f"{NS}:{{gsm8k}}", "count", "1")
        with pytest.raises(NoPermissionError, match="no permissions to run"):
            client.delete(f"{NS}:{{gsm8k}}")
    finally:
        client.close()
    assert admin.hgetall(f"{NS}:{{gsm8k}}") == before


# --- wrong passwords ------------------------------------------------------------------------


@pytest.mark.parametrize("credentials", ["trainer:wrong-password", "nobody:trainer-password", ":wrong-password"],
                         ids=["wrong-password", "unknown-user", "wrong-default-password"])
def test_wrong_password_fails_cleanly(server: Server, credentials: str) -> None:
    url = f"redis://{credentials}@127.0.0.1:{server.port}/0"
    store = StatsStore(url, NS, retry=None)
    norm = SharedRewardNormalizer("gsm8k", store)
    started = time.monotonic()
    try:
        with pytest.raises(AuthenticationError, match="invalid username-password pair"):
            store.get("gsm8k")
        with pytest.raises(AuthenticationError, match="invalid username-password pair"):
            norm.normalize([1.0])
    finally:
        store.client.close()
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(("query", "message"), [
    ("", "must be called with the client already authenticated"),  # RESP3: HELLO 3 refused before AUTH
    ("?protocol=2", "Authentication required"),
], ids=["resp3", "resp2"])
def test_no_password_fails_cleanly(server: Server, query: str, message: str) -> None:
    store = StatsStore(f"redis://127.0.0.1:{server.port}/0{query}", NS, retry=None)
    try:
        with pytest.raises(AuthenticationError, match=message):
            store.get("gsm8k")
    finally:
        store.client.close()


def test_wrong_password_is_not_retried(server: Server) -> None:
    """No retry can fix a password: the default retry policy gives up at once."""
    store = StatsStore(server.url("trainer", "wrong-password"), NS)
    started = time.monotonic()
    try:
        with pytest.raises(AuthenticationError):
            store.get("gsm8k")
    finally:
        store.client.close()
    assert store.retries == 0
    assert time.monotonic() - started < 1
