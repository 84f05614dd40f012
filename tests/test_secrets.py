"""API keys: read from the environment or a file, sent only to the endpoint's origin, and
never written anywhere: validate and profile run against a real local HTTP server that
demands the key (and, in one answer, echoes it back), then every output file, the console
output and the log records are searched for it."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from driftsim.profiling.http import EndpointError, OpenAIClient
from driftsim.profiling.secrets import ApiKey, EndpointAuth, SecretError, load_api_key, redact

KEY = "sk-driftsim-TEST-7f3a9c2e51b84d06"  # distinctive, so a grep cannot miss it


class KeyServer:
    """A small OpenAI-compatible server on loopback that answers 401 without ``Bearer KEY``.

    Completion ``fail_nth`` (1-based) answers 500 with the request's Authorization header in
    its body, as a careless server might. ``redirect_to`` makes ``/v1/models`` redirect there.
    """

    def __init__(self, *, fail_nth: int | None = None, redirect_to: str | None = None) -> None:
        self.auth_seen: list[str | None] = []
        self.completions = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output clean
                pass

            def _json(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization")
                outer.auth_seen.append(auth)
                if auth != f"Bearer {KEY}":
                    self._json(401, {"error": "missing or wrong API key"})
                    return False
                return True

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path == "/v1/models" and redirect_to:
                    self.send_response(307)
                    self.send_header("location", f"{redirect_to}/v1/models")
                    self.send_header("content-length", "0")
                    self.end_headers()
                elif self.path == "/health":
                    self._json(200, {})
                elif self.path == "/v1/models":
                    self._json(200, {"data": [{"id": "tiny", "max_model_len": 1024}]})
                elif self.path == "/version":
                    self._json(200, {"version": "key-server"})
                elif self.path == "/metrics":
                    body = b'vllm:cache_config_info{block_size="16",num_gpu_blocks="2000"} 1.0\n'
                    self.send_response(200)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self._json(404, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                if not self._authorized():
                    return
                outer.completions += 1
                if fail_nth is not None and outer.completions == fail_nth:
                    self._json(500, {"error": f"internal error handling {self.headers.get('Authorization')}"})
                    return
                n, p = int(body["max_tokens"]), len(body["prompt"])
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for k in range(1, n + 1):
                    chunk = {"choices": [{"text": "x", "finish_reason": "length" if k == n else None}],
                             "usage": {"prompt_tokens": p, "completion_tokens": k}}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "KeyServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def files_containing(folder: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def cli_app(command):
    import typer

    app = typer.Typer()
    app.command()(command)
    return app


def test_validate_uses_the_key_from_the_environment_and_never_writes_it(tmp_path, monkeypatch, caplog):
    from driftsim.cli.validate_cmds import validate

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DRIFTSIM_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "out"
    with KeyServer(fail_nth=9) as server:  # the 9th completion (a replayed one) echoes the key back
        res = CliRunner().invoke(cli_app(validate), [
            "--endpoint", server.url, "--profile", "l4-qwen1.5-1.8b-chat-linear", "--requests", "8",
            "--loads", "0.5", "--no-calibrate", "--overhead-ms", "1", "--max-num-seqs", "8",
            "--max-num-batched-tokens", "256", "--out", str(out)])
    assert res.exit_code == 0, res.output
    # the key was used, and only ever the right one was sent
    assert server.auth_seen and set(server.auth_seen) == {f"Bearer {KEY}"}
    assert server.completions >= 9
    real = __import__("polars").read_parquet(out / "real_requests.parquet")
    echoed = real.filter(real["status"] == "error")
    assert echoed.height == 1 and "internal error handling Bearer ***" in echoed["error"][0]
    # ... and it is nowhere in what the run wrote or printed
    assert {"real_requests.parquet", "report.html", "validation.json"} <= {p.name for p in out.iterdir()}
    assert files_containing(out, KEY) == []
    assert KEY not in res.output
    assert KEY not in caplog.text


def test_validate_reads_a_key_file_and_says_clearly_when_it_is_missing(tmp_path, monkeypatch):
    from driftsim.cli.validate_cmds import validate

    monkeypatch.delenv("DRIFTSIM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"  {KEY}\n")
    out = tmp_path / "out"
    args = ["--profile", "l4-qwen1.5-1.8b-chat-linear", "--requests", "4", "--loads", "0.5", "--no-calibrate",
            "--overhead-ms", "1", "--max-num-seqs", "8", "--max-num-batched-tokens", "256"]
    with KeyServer() as server:
        res = CliRunner().invoke(cli_app(validate), ["--endpoint", server.url, "--api-key-file", str(key_file), *args,
                                                     "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert set(server.auth_seen) == {f"Bearer {KEY}"}
        assert files_containing(out, KEY) == [] and KEY not in res.output
        # without a key the server refuses, and the message says so without any key in it
        res = CliRunner().invoke(cli_app(validate), ["--endpoint", server.url, *args, "--out", str(tmp_path / "o2")])
        assert res.exit_code == 2 and "401" in res.output
        res = CliRunner().invoke(cli_app(validate), ["--endpoint", server.url, "--api-key-file",
                                                     str(tmp_path / "nope.txt"), *args, "--out", str(tmp_path / "o3")])
        assert res.exit_code == 2 and "nope.txt: no such file" in " ".join(res.output.split())


def test_profile_over_http_uses_the_key_and_never_writes_it(tmp_path, monkeypatch, caplog):
    from driftsim.cli.profiling_cmds import profile

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("DRIFTSIM_API_KEY", raising=False)
    out = tmp_path / "prof"
    out.mkdir()
    with KeyServer(fail_nth=2) as server:
        res = CliRunner().invoke(cli_app(profile), [
            "--engine", "http", "--endpoint", server.url, "--budget-s", "2", "--max-num-seqs", "8",
            "--max-num-batched-tokens", "256", "--out", str(out / "m.parquet")])
    assert server.auth_seen and set(server.auth_seen) == {f"Bearer {KEY}"}
    assert server.completions >= 2  # it measured; the second answer echoed the key back and stopped it
    assert (out / "m.parquet").is_file() and "Bearer ***" in res.output
    assert files_containing(out, KEY) == []
    assert KEY not in res.output and KEY not in caplog.text
    assert KEY not in repr(res.exception) and KEY not in str(res.exception)


def test_the_key_goes_to_the_endpoint_origin_only(tmp_path):
    with KeyServer() as elsewhere, KeyServer(redirect_to=None) as home:
        auth = EndpointAuth(ApiKey(KEY), home.url)
        with httpx.Client(auth=auth, follow_redirects=True) as c:
            c.get(f"{home.url}/health")
            c.get(f"{elsewhere.url}/health")  # another port: another origin
        assert home.auth_seen == [f"Bearer {KEY}"]
        assert elsewhere.auth_seen == [None]
    # a redirect to another origin: driftsim's client does not follow it, and says so without the key
    with KeyServer() as elsewhere:
        with KeyServer(redirect_to=elsewhere.url) as home:
            client = OpenAIClient(home.url, api_key=ApiKey(KEY))
            with pytest.raises(EndpointError) as info:
                client.models()
            assert "answered 307, a redirect to" in str(info.value) and KEY not in str(info.value)
        assert elsewhere.auth_seen == []


def test_keys_do_not_print_and_are_masked_in_any_text(tmp_path):
    key = ApiKey(KEY)
    assert KEY not in repr(key) and KEY not in str(key) and KEY not in f"{key}" and key.reveal() == KEY
    from driftsim.profiling.http import HttpConfig

    cfg = HttpConfig(endpoint="http://x", api_key=KEY)  # a plain str is wrapped
    assert isinstance(cfg.api_key, ApiKey) and KEY not in repr(cfg)
    assert redact(f"echo: Bearer {KEY}!") == "echo: Bearer ***!"
    assert KEY not in str(EndpointError(f"server said {KEY}"))
    with pytest.raises(TypeError):
        __import__("pickle").dumps(key)
    assert load_api_key(env={"OPENAI_API_KEY": " b-key ", "DRIFTSIM_API_KEY": "a-key"}).reveal() == "a-key"
    assert load_api_key(env={"OPENAI_API_KEY": "b-key"}).reveal() == "b-key"
    assert load_api_key(env={}) is None
    empty = tmp_path / "empty"
    empty.write_text("\n \n")
    with pytest.raises(SecretError, match="empty; put the key on its first line"):
        load_api_key(empty)
