"""A throwaway redis-server for tests: a temp directory, a free loopback port, no persistence.

`stop()` and `start()` again on the same port stand for an outage and a recovery. The
fixtures in tests/conftest.py give one server per session (`redis_server`, flushed before
each test that asks for `redis_url`) and one per test for outages (`own_redis_server`).

`tls=make_tls(...)`: the server listens with TLS only (Debian's redis-server is built with
it), its certificate signed by a throwaway CA that `make_tls` creates with the openssl CLI;
`url()` is then `rediss://` with that CA (and, when the server requires one, the client's
certificate) in redis-py's URL parameters, the way docs/deploy.md says to configure it.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from tests.support import free_port as free_port  # re-exported: tests import it from here

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)


OPENSSL = shutil.which("openssl")

_CA_CONFIG = """[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = {name}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""
_LEAF_EXTENSIONS = """basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
"""


@dataclass(frozen=True, slots=True)
class Tls:
    """A throwaway CA and two certificates it signed (for 127.0.0.1 and localhost)."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path, name: str = "switchboard test CA") -> Tls:
    """A CA (`name`), a server and a client certificate, in `directory` (P-256 keys)."""
    if OPENSSL is None:
        raise RuntimeError("the openssl command is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.cnf").write_text(_CA_CONFIG.format(name=name))
    (directory / "leaf.cnf").write_text(_LEAF_EXTENSIONS)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        assert OPENSSL is not None
        subprocess.run([OPENSSL, *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-new", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-config", "ca.cnf")  # fmt: skip
    for serial, leaf in enumerate(("server", "client"), start=2):
        openssl("req", "-new", *ec, "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr",
                "-subj", f"/CN={leaf}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-set_serial", str(serial), "-out", f"{leaf}.pem", "-days", "2",
                "-extfile", "leaf.cnf")  # fmt: skip
    return Tls(
        ca=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


class RedisServer:
    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        tls: Tls | None = None,
        client_certs: bool = False,
        tls_protocols: str | None = None,
    ) -> None:
        """`tls`: TLS only, on the port; `client_certs`: clients must present a certificate
        of the same CA (mutual TLS); `tls_protocols`: e.g. "TLSv1.2" only (redis-server's
        default takes 1.2 and 1.3)."""
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.client_certs = client_certs
        self.tls_protocols = tls_protocols
        self.process: subprocess.Popen[bytes] | None = None

    def url(
        self,
        db: int = 0,
        *,
        ca: Path | None = None,
        client: Tls | None = None,
        client_cert: bool = True,
    ) -> str:
        """`ca`: another CA file than the server's (a wrong one); `client`: the client
        certificate of another CA's `Tls` (one the server does not trust);
        `client_cert=False`: none, although the server requires one."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/{db}"
        params = {"ssl_ca_certs": str(ca or self.tls.ca)}
        if self.client_certs and client_cert:
            params |= {
                "ssl_certfile": str((client or self.tls).client_cert),
                "ssl_keyfile": str((client or self.tls).client_key),
            }
        return f"rediss://{auth}127.0.0.1:{self.port}/{db}?{urlencode(params)}"

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.tls is None:
            return sock
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        if self.client_certs:
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context.wrap_socket(sock, server_hostname="127.0.0.1")

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls is not None:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            args += ["--tls-ca-cert-file", str(self.tls.ca)]
            args += ["--tls-auth-clients", "yes" if self.client_certs else "no"]
            if self.tls_protocols:
                args += ["--tls-protocols", self.tls_protocols]
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited: {(self.directory / 'redis.log').read_text()}"
                )
            try:
                with self._connect(timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def flush(self) -> None:
        with self._connect(timeout=2) as sock:
            auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
            sock.sendall(auth + b"FLUSHALL\r\n")
            expected = 2 if self.password else 1
            data = b""
            while data.count(b"\r\n") < expected:
                data += sock.recv(64)
