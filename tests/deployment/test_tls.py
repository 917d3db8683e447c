"""TLS: the normalizer and the stores over ``rediss://`` to a private TLS-only redis-server.

A CA and a server certificate for 127.0.0.1 and localhost (subjectAltName) are made with the
``openssl`` command line in a temp dir; the server listens on a TLS port only (``--port 0``).
Skipped with a reason when ``openssl`` is missing or this redis-server was built without TLS
(a failure under SHARED_REWARDNORM_REQUIRE_REDIS=1, as everywhere else in the suite).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from shared_rewardnorm import (
    AsyncStatsStore,
    SharedRewardNormalizer,
    StatsStore,
)
from tests.support import REPO
from tests.support.helpers import require_binaries, unavailable
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer, ServerExited

pytestmark = pytest.mark.own_server

DOC = REPO / "docs" / "operations" / "security.md"


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the server's certificate


_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def _openssl(directory: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], check=False, cwd=directory, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr[-2000:]}")


def _make_ca(directory: Path, name: str) -> Path:
    _openssl(directory, "req", "-x509", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", "2", "-subj", f"/CN=shared_rewardnorm test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return directory / f"{name}.crt"


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate it signs for 127.0.0.1/localhost, and an unrelated CA."""
    if shutil.which("openssl") is None:
        unavailable("the openssl command line is not on PATH, so no test certificates can be made")
    ca = _make_ca(directory, "ca")
    other_ca = _make_ca(directory, "other-ca")
    (directory / "server.ext").write_text(_SERVER_EXTENSIONS, encoding="ascii")
    _openssl(directory, "req", "-new", *_EC, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    _openssl(directory, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    return Certificates(ca, directory / "server.crt", directory / "server.key", other_ca)


# --- a TLS-only server ----------------------------------------------------------------------


class TLSUnsupported(Exception):
    """This redis-server build does not do TLS."""


#: What a redis-server built without TLS says about the tls-* options.
_NO_TLS = re.compile(r"bad directive|unknown option|not supported|unsupported|TLS is not|tls.*not (built|compiled)",
                     re.IGNORECASE)


class TLSRedisServer(RedisServer):
    """``RedisServer`` listening on a TLS port only (``--port 0 --tls-port N``); ``self.port``
    is the TLS port. Readiness is checked with a TLS client, as the plain port is closed."""

    def __init__(self, directory: Path, certificates: Certificates, args: list[str] | None = None) -> None:
        super().__init__(directory, args)
        self.certificates = certificates

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.certificates.ca}"

    def command(self) -> list[str]:
        command = super().command()
        position = command.index("--port")
        command[position + 1] = "0"
        c = self.certificates
        return [*command, "--tls-port", str(self.port), "--tls-cert-file", str(c.cert), "--tls-key-file", str(c.key),
                "--tls-ca-cert-file", str(c.ca), "--tls-auth-clients", "no"]

    def ping_client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.certificates.ca),
                           socket_timeout=1, socket_connect_timeout=1)

    def _start_once(self) -> TLSRedisServer:
        try:
            return super()._start_once()
        except ServerExited as exc:
            if _NO_TLS.search(exc.output):
                raise TLSUnsupported(exc.output[-1000:]) from None
            raise


@dataclass(frozen=True)
class TLSServer:
    port: int
    certificates: Certificates

    def url(self, host: str = "127.0.0.1", credentials: str = "", query: str | None = None) -> str:
        query = f"ssl_ca_certs={self.certificates.ca}" if query is None else query
        return f"rediss://{credentials}{host}:{self.port}/0" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    require_binaries("redis-server")
    certificates = make_certificates(tmp_path_factory.mktemp("certs"))
    server = TLSRedisServer(tmp_path_factory.mktemp("tls"), certificates, NO_PERSISTENCE)
    try:
        server.start()
    except TLSUnsupported as exc:
        unavailable(f"this redis-server was built without TLS support: {exc}")
    try:
        yield TLSServer(server.port, certificates)
    finally:
        server.stop()


@pytest.fixture
def ns() -> str:
    return f"srn-tls-{uuid.uuid4().hex[:12]}"


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_normalizer_over_tls(tls_server: TLSServer, ns: str, host: str) -> None:
    url = tls_server.url(host)
    norm = SharedRewardNormalizer("gsm8k", url, namespace=ns, warmup=2)
    try:
        normalized = norm.normalize([1.0, 2.0, 3.0])
        assert len(normalized) == 3 and abs(sum(normalized)) < 1e-9
        assert (norm.count, norm.mean) == (3, 2.0)
        assert norm.store.client.connection_pool.connection_class is redis.SSLConnection
    finally:
        norm.store.client.close()
    store = StatsStore(url, ns)  # a second client reads back what the first wrote
    try:
        stats = store.get("gsm8k")
        assert (stats.count, stats.mean, stats.min, stats.max) == (3, 2.0, 1.0, 3.0)
        assert store.envs() == ["gsm8k"]
    finally:
        store.client.close()


def test_explicit_certificate_requirement_in_url(tls_server: TLSServer, ns: str) -> None:
    url = tls_server.url(query=f"ssl_ca_certs={tls_server.certificates.ca}&ssl_cert_reqs=required")
    store = StatsStore(url, ns)
    try:
        assert store.update("gsm8k", [5.0, 7.0]).count == 2
    finally:
        store.client.close()


def test_async_store_over_tls(tls_server: TLSServer, ns: str) -> None:
    async def run() -> None:
        store = AsyncStatsStore(tls_server.url(), ns)
        try:
            assert (await store.update("math", [1.0, 3.0])).count == 2
            results = await asyncio.gather(*(store.update("math", [float(i)]) for i in range(6)))
            assert max(stats.count for stats in results) == 8
            assert (await store.get("math")).count == 8
            assert await store.envs() == ["math"]
        finally:
            await store.aclose()

    asyncio.run(run())


def test_least_privilege_user_over_tls(tls_server: TLSServer) -> None:
    """The doc's ``trainer`` user, password in the ``rediss://`` URL."""
    match = re.search(r"^ACL SETUSER trainer reset on >(\S+) (.+)$", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "docs/operations/security.md lost its trainer line"
    password, rules = match[1], match[2].split()
    admin = redis.Redis.from_url(tls_server.url())
    try:
        admin.execute_command("ACL", "SETUSER", "trainer", "reset", "on", f">{password}", *rules)
        url = tls_server.url(credentials=f"trainer:{password}@")
        store = StatsStore(url, "rewardnorm", functions=False, retry=None)
        try:
            assert SharedRewardNormalizer("gsm8k", store, warmup=2).normalize([2.0, 4.0]) == pytest.approx([-1.0, 1.0])
            assert store.get("gsm8k").count == 2
        finally:
            store.client.close()
    finally:
        for key in admin.scan_iter(match="rewardnorm:*"):
            admin.delete(key)
        admin.execute_command("ACL", "DELUSER", "trainer")
        admin.close()


@pytest.mark.parametrize("which", ["no CA (system trust store)", "another CA"])
def test_client_without_the_ca_is_refused(tls_server: TLSServer, ns: str, which: str) -> None:
    query = "" if which.startswith("no CA") else f"ssl_ca_certs={tls_server.certificates.other_ca}"
    store = StatsStore(tls_server.url(query=query), ns, retry=None)
    try:
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            store.update("gsm8k", [1.0])
    finally:
        store.client.close()


def test_async_client_without_the_ca_is_refused(tls_server: TLSServer, ns: str) -> None:
    async def run() -> None:
        store = AsyncStatsStore(tls_server.url(query=""), ns, retry=None)
        try:
            with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await store.get("gsm8k")
        finally:
            await store.aclose()

    asyncio.run(run())


def test_certificate_failure_is_not_retried(tls_server: TLSServer, ns: str) -> None:
    """No retry can fix an untrusted certificate: the default retry policy gives up at once."""
    store = StatsStore(tls_server.url(query=""), ns)
    started = time.monotonic()
    try:
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            store.get("gsm8k")
    finally:
        store.client.close()
    assert store.retries == 0
    assert time.monotonic() - started < 1
