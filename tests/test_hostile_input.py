"""Hostile and malformed process files: mutated copies of the bundled diagrams (hypothesis), broken
XML, missing references, huge files, deep nesting, billion laughs and external entities get a clear
400 from ``POST /api/processes`` (``{"error", "errors": [...]}``) and never a server error; XML
parsing never expands entities or reaches the network (a listening socket counts connections)."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from engine import SYSTEM
from engine.definitions import MAX_FILE_BYTES
from engine.identity import add_user
from engine.spiff import SAFE_XML_PARSER

ROOT = Path(__file__).parent.parent
BUNDLE = {p.name: p.read_bytes() for p in sorted(SAMPLES.iterdir()) if p.name.startswith("sample")}
PRODUCT = {p.name: p.read_bytes() for p in [*(ROOT / "processes").glob("dispatch*"),
                                            ROOT / "processes" / "repair_skill.dmn",
                                            *(ROOT / "forms").glob("dispatch-*.json")]}


class Listener:
    """A local TCP port that counts every connection: an XML parser fetching a URL would show here."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.server.close()


@pytest.fixture(scope="module")
def deployer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    """One app on SQLite for the whole module (hypothesis runs many examples against it)."""
    from app import create_app

    path = tmp_path_factory.mktemp("hostile") / "aftercare.db"
    from handlers import build_registry

    registry = build_registry()  # the product's handlers (dispatch) plus the sample's
    registry.register("sample.notify", lambda ctx, recipient, priority: {})
    registry.register("sample.flaky", lambda ctx, value=None: {})
    app = create_app({"DATABASE_URL": f"sqlite:///{path}", "SECRET_KEY": "test-secret", "TESTING": True,
                      "HANDLER_REGISTRY": registry, "SCHEDULER": "off", "AUDIT_SEAL_INTERVAL": 0})
    svc = app.extensions["aftercare"]
    svc.db.migrate()
    with svc.db.write() as s:
        add_user(s, "owner", PASSWORD, ["process-owner"])
    client = app.test_client()
    token = client.post("/api/auth/token", json={"username": "owner", "password": PASSWORD}).get_json()["token"]
    yield client, {"Authorization": f"Bearer {token}"}
    svc.db.dispose()


def deploy(deployer: tuple[Any, dict[str, str]], files: dict[str, bytes]) -> Any:
    client, headers = deployer
    started = time.monotonic()
    res = client.post("/api/processes", headers=headers, content_type="multipart/form-data",
                      data={"files": [(io.BytesIO(body), name) for name, body in files.items()]})
    assert time.monotonic() - started < 20, "deployment check took too long"
    return res


def assert_clear_400(res: Any) -> dict[str, Any]:
    assert res.status_code == 400, (res.status_code, res.get_data(as_text=True)[:500])
    body = res.get_json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("errors"), list) and body["errors"], body
    for problem in body["errors"]:
        assert problem.get("message"), problem
    return body


def test_the_bundled_diagrams_deploy(deployer: Any) -> None:
    assert deploy(deployer, BUNDLE).status_code == 201
    assert deploy(deployer, PRODUCT).status_code == 201


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d">
<bpmn:process id="lol" isExecutable="true" name="&lol9;"/></bpmn:definitions>"""


def _hostile(port: int) -> dict[str, bytes]:
    bpmn = BUNDLE["sample.bpmn"].decode()
    body = bpmn.split("?>", 1)[1] if bpmn.startswith("<?xml") else bpmn
    url = f"http://127.0.0.1:{port}"
    return {
        "billion-laughs": BILLION_LAUGHS,
        "xxe-file": ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                     + body.replace('name="Register request"', 'name="&x;"')).encode(),
        "xxe-network": (f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "{url}/entity">]>'
                        + body.replace('name="Register request"', 'name="&x;"')).encode(),
        "parameter-entity": (f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % p SYSTEM "{url}/dtd"> %p;]>'
                             + body).encode(),
        "external-dtd": (f'<?xml version="1.0"?><!DOCTYPE d SYSTEM "{url}/d.dtd">' + body).encode(),
        "xinclude": body.replace(
            '<bpmn:laneSet', f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{url}/x.xml"/>'
            '<bpmn:laneSet', 1).encode(),
        "schema-location": body.replace(
            "<bpmn:definitions ", '<bpmn:definitions xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xsi:schemaLocation="http://www.omg.org/spec/BPMN/20100524/MODEL {url}/BPMN20.xsd" ', 1).encode(),
    }


@pytest.mark.parametrize("case", ["billion-laughs", "xxe-file", "xxe-network", "parameter-entity", "external-dtd"])
def test_entities_and_dtds_are_refused(deployer: Any, listener: Listener, case: str) -> None:
    files = dict(BUNDLE)
    files["sample.bpmn"] = _hostile(listener.port)[case]
    started = time.monotonic()
    body = assert_clear_400(deploy(deployer, files))
    assert time.monotonic() - started < 5
    assert "root:" not in str(body) and "lollol" not in str(body)
    assert listener.hits == 0


@pytest.mark.parametrize("case", ["xinclude", "schema-location"])
def test_includes_and_schema_locations_are_never_fetched(deployer: Any, listener: Listener, case: str) -> None:
    files = dict(BUNDLE)
    files["sample.bpmn"] = _hostile(listener.port)[case]
    res = deploy(deployer, files)
    assert res.status_code in (201, 400), res.get_data(as_text=True)[:300]
    assert listener.hits == 0


def test_the_safe_parser_never_expands_entities(listener: Listener) -> None:
    for raw in _hostile(listener.port).values():
        try:
            root = etree.fromstring(raw, SAFE_XML_PARSER)
        except etree.XMLSyntaxError:
            continue
        text = etree.tostring(root).decode()
        assert "root:x:0:0" not in text and "lollollol" not in text
    assert listener.hits == 0


def test_deep_nesting_huge_files_and_broken_files(deployer: Any) -> None:
    deep = (b'<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d">'
            + b"<bpmn:documentation>" * 100_000 + b"</bpmn:documentation>" * 100_000 + b"</bpmn:definitions>")
    huge = BUNDLE["sample.bpmn"].replace(b"</bpmn:definitions>",
                                         b"<!--" + b"x" * (MAX_FILE_BYTES + 10) + b"--></bpmn:definitions>")
    wide = BUNDLE["sample.bpmn"].replace(
        b"</bpmn:definitions>", b"".join(b'<bpmn:message id="m%d" name="m%d"/>' % (i, i) for i in range(30_000))
        + b"</bpmn:definitions>")
    broken = {
        "deep.bpmn": deep,
        "huge.bpmn": huge,
        "truncated.bpmn": BUNDLE["sample.bpmn"][: len(BUNDLE["sample.bpmn"]) // 2],
        "binary.bpmn": bytes(range(256)) * 8,
        "latin1.bpmn": "<?xml version='1.0'?><a>\xe9</a>".encode("latin-1"),
        "empty.bpmn": b"",
        "not-bpmn.bpmn": b"<html><body>hello</body></html>",
        "broken.dmn": BUNDLE["sample_priority.dmn"].replace(b"</definitions>", b""),
        "form.json": b'{"type": "object", "properties": {"a": {"type": 12}}}',
        "list.json": b"[1, 2, 3]",
        "nested.json": b"[" * 100_000 + b"]" * 100_000,
        "evil.exe": b"MZ",
    }
    for name, raw in broken.items():
        files = {k: v for k, v in BUNDLE.items() if not k.endswith(name.rsplit(".", 1)[1])} \
            if name.endswith((".bpmn", ".dmn")) else dict(BUNDLE)
        files[name] = raw
        assert_clear_400(deploy(deployer, files))
    res = deploy(deployer, {**{k: v for k, v in BUNDLE.items() if k != "sample.bpmn"}, "sample.bpmn": wide})
    assert res.status_code in (201, 400), res.status_code


def test_missing_references_are_named(deployer: Any) -> None:
    bpmn = BUNDLE["sample.bpmn"]
    cases = {
        "flow target": bpmn.replace(b'targetRef="register"', b'targetRef="no_such_task"', 1),
        "decision": bpmn.replace(b">sample_priority<", b">no_such_decision<", 1),
        "form": bpmn.replace(b'value="sample-register.schema.json"', b'value="no-such-form.schema.json"', 1),
        "handler": bpmn.replace(b'serviceTaskOperator id="sample.notify"', b'serviceTaskOperator id="no.such"', 1),
        "duplicate id": bpmn.replace(b'id="register"', b'id="decide"', 1),
    }
    for label, changed in cases.items():
        assert changed != bpmn, label
        body = assert_clear_400(deploy(deployer, {**BUNDLE, "sample.bpmn": changed}))
        assert any(p.get("file") for p in body["errors"]), (label, body)


# --- mutation fuzzing -----------------------------------------------------------------------------

MUTATIONS = ("delete", "insert", "duplicate", "swap_ids", "truncate", "flip")


@st.composite
def mutated_bundle(draw: st.DrawFn) -> dict[str, bytes]:
    bundle = dict(draw(st.sampled_from([BUNDLE, PRODUCT])))
    name = draw(st.sampled_from(sorted(bundle)))
    raw = bytearray(bundle[name])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        span = draw(st.integers(1, 200))
        if kind == "delete":
            del raw[at:at + span]
        elif kind == "insert":
            raw[at:at] = draw(st.sampled_from([b"<", b">", b"&", b'"', b"</x>", b"<x>", b"&amp", b"{", b"}",
                                               b"\x00", b"\xff\xfe", b"]]>", b"<!--", "名".encode()]))
        elif kind == "duplicate":
            raw[at:at] = raw[at:at + span]
        elif kind == "swap_ids":
            raw = bytearray(bytes(raw).replace(b'id="', b'id="x', draw(st.integers(1, 5))))
        elif kind == "truncate":
            del raw[at:]
        else:
            if raw:
                raw[at] = (raw[at] + draw(st.integers(1, 255))) % 256
    bundle[name] = bytes(raw)
    return bundle


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(bundle=mutated_bundle())
def test_mutated_diagrams_never_cause_a_server_error(deployer: Any, listener: Listener,
                                                     bundle: dict[str, bytes]) -> None:
    res = deploy(deployer, bundle)
    assert res.status_code in (201, 400), (res.status_code, res.get_data(as_text=True)[:500])
    if res.status_code == 400:
        assert_clear_400(res)
    assert listener.hits == 0


def test_a_deployed_mutant_still_runs_or_fails_cleanly(deployer: Any) -> None:
    """What deploys must also start: a case either runs or is an incident, never a crash."""
    client, headers = deployer
    svc = client.application.extensions["aftercare"]
    for key in ("sample", "dispatch"):
        try:
            case = svc.engine.start_case(key, {"severity": "high"}, SYSTEM)
        except Exception as exc:  # an engine error with a status is fine; anything else is not
            assert getattr(exc, "status", 500) < 500, exc
            continue
        assert case["status"] in ("running", "waiting", "completed", "error")
