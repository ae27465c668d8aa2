"""Applications through the whole stack from zero: `tiffin up` with a user's app file next to its YAML.

Every request below travels interceptor -> queue -> proxy -> API server (the application) -> runner (the echo
upstream, tests/upstream.py) and back, with an API key, over HTTPS with the local CA.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import tiffin
from tests.e2e.conftest import processes_of, write_deployment
from tests.e2e.up import Up

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("apps")


@pytest.fixture(scope="module")
def up(folder: Path) -> Iterator[Up]:
    # The user's module sits next to the YAML, found there without installing anything.
    shutil.copy(HERE / "sample_app.py", folder / "greeter_app.py")
    config = write_deployment(folder, "greeter", require_api_key=True, app="greeter_app:Greeter")
    # The same application again, open (no key) and behind a route prefix.
    shop = write_deployment(folder, "shop", app="greeter_app:Greeter", routing={"path_prefix": "/shop"})
    running = Up([config, shop], folder / "state")
    try:
        running.wait_for_line("ready: greeter", timeout_s=120)
        yield running
    finally:
        assert running.proc.stop(timeout_s=90) == 0


@pytest.fixture(scope="module")
def key(up: Up) -> str:
    return up.api_key("greeter")


@pytest.fixture
def http(up: Up) -> Iterator[httpx.Client]:
    """A plain HTTP client (what curl does), verifying tiffin's certificate."""
    with httpx.Client(base_url=up.url + "/v1/apps/greeter", verify=up.ssl_context(), timeout=60) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_up_prints_where_the_application_and_its_docs_are(up: Up) -> None:
    line = up.wait_for_line("app:   greeter", timeout_s=5)
    assert f"{up.url}/v1/apps/greeter/docs" in line


def test_docs_page_and_description_are_served_at_zero_without_waking_anything(
    up: Up, folder: Path, http: httpx.Client
) -> None:
    assert processes_of(folder, "greeter") == 0
    page = http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]  # a browser loads nothing from elsewhere
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/v1/apps/greeter/docs/assets/") for link in links), links
    for link in links:  # every asset the page names is served by tiffin itself
        asset = http.get(up.url + link)
        assert asset.status_code == 200 and len(asset.content) > 100, link
    assert "SwaggerUIBundle" in http.get("/docs/assets/swagger-ui-bundle.js").text
    assert http.get("/docs/assets/index.html").status_code == 404  # only the files the page uses

    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.0")
    assert doc["servers"] == [{"url": "/"}]
    greet = doc["paths"]["/v1/apps/greeter/greet"]["post"]
    assert greet["summary"] == "Greet, shaped: upper case, with the length."
    assert greet["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Greeting"}
    schemas = doc["components"]["schemas"]
    assert schemas["Greeting"]["required"] == ["name"]
    assert schemas["Greeting"]["properties"]["tiffin_test"]["nullable"] is True  # Optional, in OpenAPI 3.0's words
    assert schemas["Reply"]["properties"]["length"]["type"] == "integer"
    assert "text/event-stream" in doc["paths"]["/v1/apps/greeter/words"]["post"]["responses"]["200"]["content"]
    assert "/v1/apps/greeter/complete-it" in doc["paths"]
    # The page's "Authorize" button: a bearer scheme applied to every endpoint.
    assert doc["components"]["securitySchemes"] == {"apiKey": {"type": "http", "scheme": "bearer"}}
    assert doc["security"] == [{"apiKey": []}]
    assert processes_of(folder, "greeter") == 0  # reading the docs woke nothing


def test_an_endpoint_needs_the_key_and_answers_typed_json_from_zero(up: Up, http: httpx.Client, key: str) -> None:
    refused = http.post("/greet", json={"name": "Ada"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"

    reply = http.post("/greet", json={"name": "Ada", "times": 2}, headers=auth(key))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"text": "ECHO: HELLO ADA ECHO: HELLO ADA", "length": len("echo: Hello Ada") * 2 + 1}
    assert int(reply.headers["x-tiffin-cold-start-ms"]) > 0  # it woke the deployment and waited for it
    assert reply.headers["x-request-id"]


def test_a_completion_call_and_a_named_endpoint(http: httpx.Client, key: str) -> None:
    reply = http.post("/complete-it", json={"name": "Bo"}, headers=auth(key))
    assert reply.status_code == 200, reply.text
    assert reply.json() == "echo: Dear Bo"


def test_a_body_that_does_not_fit_is_a_400_naming_the_field(http: httpx.Client, key: str) -> None:
    missing = http.post("/greet", json={"times": 2}, headers=auth(key))
    assert missing.status_code == 400
    error = missing.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "name")
    assert "name: Field required" in error["message"]

    wrong = http.post("/greet", json={"name": "Ada", "times": 9}, headers=auth(key)).json()["error"]
    assert wrong["param"] == "times" and "less than or equal to 5" in wrong["message"]

    not_json = http.post("/greet", content=b"{nope", headers={**auth(key), "content-type": "application/json"})
    assert not_json.status_code == 400


def test_a_deliberate_http_error_keeps_its_status_message_and_field(http: httpx.Client, key: str) -> None:
    reply = http.post("/refuse", json={"name": "Ada"}, headers=auth(key))
    assert reply.status_code == 409
    assert reply.json()["error"] == {
        "message": "Ada is taken", "type": "invalid_request_error", "param": "name", "code": "name_taken"
    }  # fmt: skip


def test_an_exception_in_the_application_is_a_500_without_detail_and_logged(
    up: Up, http: httpx.Client, key: str
) -> None:
    reply = http.post("/crash", json={"name": "Ada"}, headers=auth(key))
    assert reply.status_code == 500
    assert reply.json()["error"]["code"] == "app_error"
    assert "secret" not in reply.text
    rid = reply.headers["x-request-id"]
    logs = "".join(p.read_text() for p in (up.state_dir / "logs").glob("greeter-api-*.log"))
    # The traceback is in the API server's log, under the request id the client got.
    assert any(rid in line and "secret internal detail at /srv/greeter" in line for line in logs.splitlines())


def test_the_engine_refusing_a_call_reaches_the_client_as_that_refusal(http: httpx.Client, key: str) -> None:
    reply = http.post("/engine_refusal", json={"name": "Ada"}, headers=auth(key))
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "test status 400"


def test_unknown_endpoints_and_applications_are_404_and_a_get_is_405(up: Up, http: httpx.Client, key: str) -> None:
    unknown = http.post("/nope", json={}, headers=auth(key))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_endpoint"
    other = httpx.post(up.url + "/v1/apps/other/greet", json={}, headers=auth(key), verify=up.ssl_context())
    assert other.status_code == 404
    assert http.get("/greet").status_code == 405
    assert http.post("/docs", json={}, headers=auth(key)).status_code == 405  # refused at the edge, not queued


def test_the_client_calls_and_streams_by_name(up: Up, key: str) -> None:
    with tiffin.Client(up.url + "/v1/apps/greeter", key, verify=up.ca) as client:
        assert client.call("greet", name="Cy") == {"text": "ECHO: HELLO CY", "length": len("echo: Hello Cy")}
        assert client.call("greet", {"name": "Cy", "times": 2})["length"] == 2 * 14 + 1
        pieces = list(client.stream("words", name="Cy", tiffin_test={"delay_s": 0.05}))
        assert pieces == ["echo:", " Hello", " Cy"]  # one item per piece the model streamed, in order
        with pytest.raises(tiffin.APIError) as invalid:
            client.call("greet", times=3)
        assert (invalid.value.status, invalid.value.param) == (400, "name")
        with pytest.raises(tiffin.APIError) as broken:
            list(client.stream("crash_mid_stream", name="Cy"))
        assert broken.value.code == "app_error" and "secret" not in str(broken.value)
        assert "/v1/apps/greeter/greet" in client.openapi()["paths"]


def test_the_async_client(up: Up, key: str) -> None:
    async def run() -> tuple[object, list[object]]:
        async with tiffin.AsyncClient(up.url + "/v1/apps/greeter", key, verify=up.ca) as client:
            whole = await client.call("greet", name="Di")
            pieces = [piece async for piece in client.stream("words", name="Di")]
            return whole, pieces

    whole, pieces = asyncio.run(run())
    assert whole == {"text": "ECHO: HELLO DI", "length": len("echo: Hello Di")}
    assert "".join(str(p) for p in pieces) == "echo: Hello Di"


def test_the_openai_endpoints_stay_beside_the_application(up: Up, key: str) -> None:
    with openai.OpenAI(base_url=up.url + "/v1", api_key=key, max_retries=0, timeout=30,
                       http_client=openai.DefaultHttpxClient(verify=up.ssl_context())) as client:  # fmt: skip
        reply = client.chat.completions.create(model="greeter", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "echo: hi"


def test_an_open_application_behind_a_route_prefix(up: Up, key: str) -> None:
    with httpx.Client(base_url=up.url, verify=up.ssl_context(), timeout=60) as http:
        page = http.get("/shop/v1/apps/shop/docs").text
        links = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert links and all(link.startswith("/shop/v1/apps/shop/docs/assets/") for link in links), links
        doc = http.get("/shop/v1/apps/shop/openapi.json").json()
        assert doc["servers"] == [{"url": "/shop"}]  # Swagger UI calls /shop + /v1/apps/shop/greet
        assert "security" not in doc and "securitySchemes" not in doc["components"]
        reply = http.post("/shop/v1/apps/shop/greet", json={"name": "Fay"})  # open: no key
        assert reply.status_code == 200 and reply.json()["text"] == "ECHO: HELLO FAY"
        # Only behind its prefix: at / the route reaches only greeter (which needs a key before anything else).
        assert http.post("/v1/apps/shop/greet", json={"name": "Fay"}).status_code == 401
        assert http.post("/v1/apps/shop/greet", json={"name": "Fay"}, headers=auth(key)).status_code == 404


def test_application_requests_count_in_the_deployment_metrics(up: Up) -> None:
    metrics = httpx.get(f"http://127.0.0.1:{up.admin_port}/metrics").text
    assert re.search(r'tiffin_requests_total\{deployment="greeter",status="200"\} [1-9]', metrics)
    assert re.search(r'tiffin_requests_total\{deployment="greeter",status="400"\} [1-9]', metrics)


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_docs_page_in_a_browser_authorizes_with_the_key_and_calls_an_endpoint(up: Up, key: str) -> None:
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            # The local CA is not in the browser's store; what is checked here is the page, not the certificate.
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.on("request", lambda r: None if r.url.startswith(up.url) else outside.append(r.url))
            page.goto(up.url + "/v1/apps/greeter/docs")
            page.locator("#operations-default-greet").wait_for(timeout=30_000)
            page.click("button.authorize")
            page.fill(".auth-container input", key)
            page.click(".auth-btn-wrapper button.authorize")
            page.click("button.btn-done")
            page.click("#operations-default-greet .opblock-summary")
            page.fill("#operations-default-greet textarea.body-param__text", '{"name": "Eve"}')
            page.click("#operations-default-greet button.execute")
            live = "#operations-default-greet .live-responses-table tbody"
            status = page.locator(f"{live} .response-col_status").first
            status.wait_for(timeout=60_000)
            assert status.inner_text().strip() == "200"
            answer = page.locator(f"{live} .response-col_description").first
            assert "ECHO: HELLO EVE" in answer.inner_text()
        finally:
            browser.close()
    assert outside == []  # Swagger UI's scripts, styles and the description all came from tiffin
