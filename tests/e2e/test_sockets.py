"""The Hero way in: the four Unix sockets of `aibroker serve` (rest, web_v1, rpc, ui).

Each socket answers its surface (curl, the official `openai` client over a Unix transport, JSON-RPC,
the HTML page); the folder is 0700 and the sockets 0660; a second broker on the same sockets or the
same data directory refuses to start and says why; a stale socket file is replaced.
"""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from deploy.sockets import SURFACES
from tests.e2e.broker import (
    CLIENT_TIMEOUT_S, Broker, of_kind, only, serve_until_exit, socket_dir_of, start_broker, uds_client, wait_until,
)
from tests.e2e.conftest import BrokerFactory

TOKEN = "sock-admin-token-9f3e"  # set, so TCP admin needs it; the rpc socket must not
HI = [{"role": "user", "content": "hi"}]
REFUSAL_S = 10.0  # a broker that must not start says so well within this
CURL_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def broker(broker_factory: BrokerFactory) -> Broker:
    return broker_factory(ADMIN_TOKEN=TOKEN)


@pytest.fixture(scope="module")
def sockets(broker: Broker) -> Path:
    return socket_dir_of(broker)


@pytest.fixture
def rest(sockets: Path) -> Iterator[httpx.Client]:
    with uds_client(sockets / "rest.sock") as c:
        yield c


def chat(client: httpx.Client, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    resp = client.post(path, json={"model": "auto", "messages": HI, "max_tokens": 4}, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp


def assert_serves(sockets: Path) -> None:
    with uds_client(sockets / "rest.sock") as c:
        assert c.get("/v1/models").status_code == 200


# ---- each surface on its socket ---------------------------------------------------------------------


def test_curl_lists_the_models_over_rest_sock(sockets: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    done = subprocess.run([curl, "-sS", "--fail", "--max-time", "10", "--unix-socket", str(sockets / "rest.sock"),
                           "http://x/v1/models"], capture_output=True, text=True, timeout=CURL_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    ids = {m["id"] for m in listing["data"]}
    assert listing["object"] == "list"
    assert {"auto", "fake-small", "fake-embed"} <= ids


def test_the_openai_client_chats_and_streams_over_rest_sock(sockets: Path, broker: Broker) -> None:
    transport = httpx.HTTPTransport(uds=str(sockets / "rest.sock"))
    with httpx.Client(transport=transport, timeout=CLIENT_TIMEOUT_S) as http, \
            openai.OpenAI(base_url="http://x/v1", api_key="k", http_client=http, max_retries=0) as client:
        reply = client.chat.completions.create(model="fake-small", messages=HI,  # type: ignore[arg-type]
                                               extra_headers={"X-Request-Id": "uds-json-1"})
        assert (reply.choices[0].message.content or "").startswith("fake reply from fakeai/fake-small: ")
        assert reply.usage is not None and reply.usage.completion_tokens == 16
        with client.chat.completions.create(model="fake-small", messages=HI, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True},
                                            extra_headers={"X-Request-Id": "uds-stream-1"}) as stream:
            chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # the same deterministic reply, streamed
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
    for rid, streamed in (("uds-json-1", False), ("uds-stream-1", True)):
        events = broker.settled_events(rid)
        usage = only(events, "usage.recorded")
        assert only(events, "request.received")["stream"] is streamed
        assert (usage["outcome"], usage["completion_tokens"]) == ("ok", 16)
        assert {e["ip"] for e in events} == {"unix"}  # a socket peer with no forwarding headers


def test_rpc_sock_answers_rpc_discover_without_a_token(sockets: Path, broker: Broker) -> None:
    discover = {"jsonrpc": "2.0", "method": "rpc.discover", "id": 7}
    with uds_client(sockets / "rpc.sock") as c:
        resp = c.post("/rpc", json=discover)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        assert doc["id"] == 7 and doc["result"]["info"]["title"] == "aibroker admin"
        assert "spend.by_context" in {m["name"] for m in doc["result"]["methods"]}
        assert c.get("/openrpc.json").status_code == 200
        assert c.get("/metrics").status_code == 200
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as tcp:  # the same call over TCP needs the token
        refused = tcp.post(f"{broker.admin_url}/rpc", json=discover)
        assert refused.status_code == 401
        assert "ADMIN_TOKEN" in refused.json()["error"]["message"]
        allowed = tcp.post(f"{broker.admin_url}/rpc", json=discover, headers={"authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200 and allowed.json()["result"] == doc["result"]


def test_ui_sock_serves_the_page_with_the_spend_table(sockets: Path, rest: httpx.Client) -> None:
    chat(rest, **{"X-Hero-Context": "uispend"})
    with uds_client(sockets / "ui.sock") as ui:
        page = ui.get("/")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>aibroker</title>" in page.text and "<h1>aibroker</h1>" in page.text
        assert "Spend this month by context" in page.text
        row = '<td class="">uispend</td>'
        wait_until(lambda: row in ui.get("/").text, timeout_s=5.0)
        page = ui.get("/")
    assert row in page.text, page.text
    spend = page.text.split("Spend this month by context", 1)[1].split("<h2>", 1)[0]
    assert "<th>cost_usd</th>" in spend and row in spend


def test_web_v1_sock_answers_with_the_routers_public_urls(sockets: Path) -> None:
    forwarded = {"X-Forwarded-Prefix": "/hero_aibroker", "X-Forwarded-Host": "hero.example.org",
                 "X-Forwarded-Proto": "https"}
    with uds_client(sockets / "web_v1.sock") as web:
        for path in ("/", "/v1"):
            index = web.get(path, headers=forwarded)
            assert index.status_code == 200, index.text
            doc = index.json()
            assert doc["openai_base_url"] == "https://hero.example.org/hero_aibroker/v1"
            assert doc["endpoints"]["chat"] == "https://hero.example.org/hero_aibroker/v1/chat/completions"
            assert doc["endpoints"]["models"] == "https://hero.example.org/hero_aibroker/v1/models"
        plain = web.get("/", headers={"Host": "localhost:9"}).json()  # no router: the Host as given
        assert plain["openai_base_url"] == "http://localhost:9/v1"


def test_web_v1_sock_serves_the_api_without_v1(sockets: Path) -> None:
    with uds_client(sockets / "web_v1.sock") as web:
        reply = chat(web, "/chat/completions").json()
        assert reply["choices"][0]["message"]["content"].startswith("fake reply from ")
        assert reply["usage"]["completion_tokens"] == 4
        assert chat(web, "/v1/chat/completions").json()["choices"][0]["message"]["content"] == \
            reply["choices"][0]["message"]["content"]
        models = web.get("/models")
        assert models.status_code == 200 and "fake-small" in {m["id"] for m in models.json()["data"]}


def test_rest_sock_trusts_forwarded_for_as_the_local_proxy(rest: httpx.Client, broker: Broker) -> None:
    """nginx or the Hero router connects over the socket: its X-Forwarded-For names the caller."""
    chat(rest, **{"X-Forwarded-For": "6.6.6.6", "X-Request-Id": "uds-xff-1"})
    chat(rest, **{"X-Real-IP": "7.7.7.7", "X-Request-Id": "uds-real-ip-1"})
    chat(rest, **{"X-Request-Id": "uds-none-1"})
    for rid, ip in (("uds-xff-1", "6.6.6.6"), ("uds-real-ip-1", "7.7.7.7"), ("uds-none-1", "unix")):
        events = broker.settled_events(rid)
        assert of_kind(events, "usage.recorded"), events
        assert {e["ip"] for e in events} == {ip}, (rid, events)


@pytest.mark.parametrize("surface", SURFACES)
def test_health_and_ready_answer_on_every_socket(sockets: Path, surface: str) -> None:
    with uds_client(sockets / f"{surface}.sock") as c:
        health, ready = c.get("/health"), c.get("/ready")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


# ---- files, modes, and who may start ------------------------------------------------------------------


def test_the_socket_dir_is_0700_and_each_socket_0660(sockets: Path) -> None:
    assert stat.S_IMODE(sockets.stat().st_mode) == 0o700
    assert sorted(p.name for p in sockets.iterdir()) == sorted(f"{s}.sock" for s in SURFACES)
    for surface in SURFACES:
        st = (sockets / f"{surface}.sock").lstat()
        assert stat.S_ISSOCK(st.st_mode), surface
        assert stat.S_IMODE(st.st_mode) == 0o660, (surface, oct(st.st_mode))


def test_socket_mode_is_configurable(tmp_path: Path) -> None:
    with start_broker(tmp_path, {"SOCKET_MODE": "0600"}) as b:
        modes = {s: stat.S_IMODE((socket_dir_of(b) / f"{s}.sock").lstat().st_mode) for s in SURFACES}
    assert modes == dict.fromkeys(SURFACES, 0o600)


def test_a_second_broker_on_the_same_sockets_exits_2_naming_the_socket(tmp_path: Path, sockets: Path) -> None:
    code, err, took = serve_until_exit(tmp_path, {"HERO_SOCKET_DIR": str(sockets.parent)}, timeout_s=REFUSAL_S)
    assert code == 2, err
    assert took < REFUSAL_S
    assert str(sockets / "rest.sock") in err and "another process" in err, err
    assert "Traceback" not in err, err
    assert_serves(sockets)  # the live broker's sockets are untouched
    assert sorted(p.name for p in sockets.iterdir()) == sorted(f"{s}.sock" for s in SURFACES)


def test_a_second_broker_on_the_same_data_dir_is_refused_by_the_writer_lock(tmp_path: Path, broker: Broker,
                                                                            sockets: Path) -> None:
    code, err, took = serve_until_exit(tmp_path, {"AIBROKER_DATA_DIR": str(broker.data_dir)}, timeout_s=REFUSAL_S)
    assert code not in (0, None), err
    assert took < REFUSAL_S
    assert "already writes the event log" in err and str(broker.data_dir) in err, err
    assert "Traceback" not in err, err
    assert not list((tmp_path / "sockets").rglob("*.sock"))  # it removed the sockets it had bound
    assert_serves(sockets)


def _stale_socket(path: Path) -> None:
    """A socket file nobody listens on: bound, then closed without unlinking (a crashed broker's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(1)
    finally:
        sock.close()
    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_stale_sockets_are_replaced(tmp_path: Path) -> None:
    stale_dir = tmp_path / "sockets" / "hero_aibroker"  # where start_broker(tmp_path) puts them
    for surface in SURFACES:
        _stale_socket(stale_dir / f"{surface}.sock")
    with start_broker(tmp_path) as b:
        assert socket_dir_of(b) == stale_dir
        for surface in SURFACES:
            with uds_client(stale_dir / f"{surface}.sock") as c:
                assert c.get("/health").status_code == 200, surface  # a stale file would refuse


def test_a_file_in_a_sockets_place_is_refused_not_deleted(tmp_path: Path) -> None:
    sockets = tmp_path / "sockets" / "hero_aibroker"
    sockets.mkdir(parents=True)
    (sockets / "rest.sock").write_text("not a socket")
    code, err, _ = serve_until_exit(tmp_path, timeout_s=REFUSAL_S)
    assert code == 2, err
    assert f"{sockets / 'rest.sock'} exists and is not a socket" in err, err
    assert (sockets / "rest.sock").read_text() == "not a socket"
