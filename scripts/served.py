"""The real server for the reliability scripts (crash-test, api-schema-test): the binary
(COMPANERO_BIN, or built once with the persistent target directory), the test models, a served
process in its own process group, and a small JSON client that tells an acknowledgement from a
connection cut off."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP_TOKEN = "setup_reliability-scripts-owner-token"
PASSWORD = "violet tractor sings at noon"
READY_BOUND_S = 60


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def binary():
    if os.environ.get("COMPANERO_BIN"):
        return os.environ["COMPANERO_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache/companero/target")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bin", "companero"],
        cwd=ROOT,
        check=True,
        env={**os.environ, "CARGO_TARGET_DIR": target},
    )
    return str(Path(target) / "release" / "companero")


def models():
    folder = os.environ.get("COMPANERO_TEST_MODELS") or subprocess.run(
        [sys.executable, str(ROOT / "scripts/fetch-test-models")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    gguf = next(Path(folder, "smollm2-135m-instruct").glob("*.gguf"))
    return str(gguf), str(Path(folder, "all-minilm-l6-v2"))


class Api:
    """JSON over HTTP. A response is (status, body); a connection error is (None, None): the
    request may or may not have reached the server, so it is not an acknowledgement."""

    def __init__(self, base):
        self.base = base

    def call(self, method, path, token=None, body=None, data=None, content_type=None, timeout=60):
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, parse(response.read())
        except urllib.error.HTTPError as error:
            return error.code, parse(error.read())
        except (OSError, urllib.error.URLError):
            return None, None

    def ok(self, method, path, token=None, body=None):
        status, reply = self.call(method, path, token, body)
        check(status is not None and 200 <= status < 300, f"{method} {path}: {status} {reply}")
        return reply

    def upload(self, token, filename, text):
        boundary = uuid.uuid4().hex
        data = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: text/markdown\r\n\r\n{text}\r\n"
            f"--{boundary}--\r\n"
        ).encode()
        return self.call(
            "POST", "/api/v1/documents", token, data=data,
            content_type=f"multipart/form-data; boundary={boundary}",
        )


def parse(raw):
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text  # an event stream, or an empty body


def wait_for(what, bound_s, probe):
    """Polls `probe` until it returns something truthy; its value, and the seconds it took."""
    started = time.monotonic()
    while True:
        value = probe()
        if value:
            return value, time.monotonic() - started
        check(time.monotonic() - started < bound_s, f"{what} not within {bound_s} s")
        time.sleep(0.05)


class Server:
    """One `companero serve` in its own process group, logging to a file."""

    def __init__(self, bin_path, data_dir, llm, embedder, log_path, extra_args=()):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [bin_path, "serve", "--data-dir", data_dir, "--bind", "127.0.0.1:0",
             "--llm", llm, "--embedder", embedder, "--offline", "--threads", "1",
             "--setup-token", SETUP_TOKEN, "--log-level", "info",
             # The load is many clients from one address: rate limits would only refuse it.
             "--api-rate-limit", "100000", "--public-rate-limit", "100000",
             "--visitor-rate-limit", "100000", "--visitor-messages-per-minute", "100000",
             *extra_args],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={k: v for k, v in os.environ.items() if not k.startswith(("COMPANERO_", "HF_"))},
            start_new_session=True,
        )

    def address(self):
        def listening():
            check(self.process.poll() is None, f"the server exited: see {self.log_path}")
            found = re.search(r"http://127\.0\.0\.1:\d+", Path(self.log_path).read_text())
            return found and found.group(0)

        return wait_for("the listening address", READY_BOUND_S, listening)[0]

    def ready(self):
        """Waits for the address and for /readyz: an Api for the server, and the seconds the
        wait for readiness took."""
        api = Api(self.address())
        _, seconds = wait_for("/readyz", READY_BOUND_S,
                              lambda: api.call("GET", "/readyz", timeout=5)[0] == 200)
        return api, seconds

    def kill(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()


def register_owner(api):
    """Registers the instance's first account with the setup token; its access token."""
    return api.ok("POST", "/api/v1/auth/register", body={
        "email": "coach@example.com", "password": PASSWORD, "full_name": "Coach",
        "setup_token": SETUP_TOKEN})["access_token"]
