"""Starting and stopping servers: fast, repeatable, and the blocking ``serve_sandbox``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest

from ghlsync_cli.sandbox import SandboxConfig, SandboxServer, serve_sandbox


def test_servers_start_and_stop_repeatedly():
    for _ in range(3):
        with SandboxServer(SandboxConfig(seed_count=10, seed=1)) as server:
            assert server.url.startswith("http://127.0.0.1:")
            health = httpx.get(f"{server.url}/_sandbox/health")
            assert health.json()["contacts"] == 10
        with pytest.raises(RuntimeError):
            server.url  # noqa: B018 - stopped servers have no URL


def test_two_servers_at_once_get_their_own_ports_and_state():
    with SandboxServer() as one, SandboxServer(SandboxConfig(seed_count=3)) as two:
        assert one.url != two.url
        assert httpx.get(f"{one.url}/_sandbox/health").json()["contacts"] == 0
        assert httpx.get(f"{two.url}/_sandbox/health").json()["contacts"] == 3


def test_a_taken_port_is_an_os_error():
    with SandboxServer() as running:
        port = int(running.url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            SandboxServer(SandboxConfig(port=port)).start()
        with pytest.raises(OSError):
            serve_sandbox(SandboxConfig(port=port))


def test_url_is_unavailable_when_stopped():
    server = SandboxServer()

    with pytest.raises(RuntimeError):
        _ = server.url


def test_serve_sandbox_blocks_until_interrupted():
    script = textwrap.dedent(
        """
        import sys
        from ghlsync_cli.sandbox import SandboxConfig, serve_sandbox

        def ready(url):
            sys.stdout.write(url + "\\n")
            sys.stdout.flush()

        serve_sandbox(SandboxConfig(seed_count=5, token="t"), on_ready=ready)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        health = httpx.get(f"{url}/_sandbox/health")
        search = httpx.post(
            f"{url}/contacts/search",
            headers={"Authorization": "Bearer t", "Version": "2021-07-28"},
            json={"locationId": "sandboxLocation00001", "pageLimit": 5},
        )
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert health.json()["contacts"] == 5
    assert search.json()["total"] == 5
    assert process.returncode == 0, stderr
