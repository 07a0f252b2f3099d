"""Who may see and do what in the console, over real HTTPS with the federation's certificates.

One-time login tokens (single use, expiry), sessions, CSRF (cross-origin, missing token,
wrong token, anonymous), client certificates (a participant is not an admin; an admin's
certificate is), the read-only policy and the security headers.
"""

from __future__ import annotations

import ssl
import time

import pytest

from sealagg.appliance.console.auth import SESSION_COOKIE


def _post(console, path, body, *, cookie=None, csrf=None, origin="self", as_kit=None):
    headers = {}
    if origin == "self":
        headers["Origin"] = console.origin
    elif origin is not None:
        headers["Origin"] = origin
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    return console.request("POST", path, body=body, headers=headers, cookie=cookie, as_kit=as_kit)


def test_login_token_is_single_use_and_sets_a_strict_session_cookie(console) -> None:
    url, expires = console.handle.login("admin")
    assert url.startswith(f"https://127.0.0.1:{console.port}/login?token=")
    assert expires == 60.0
    path = url.removeprefix(console.origin)
    first = console.request("GET", path)
    assert first.status == 303 and first.headers["Location"] == "/"
    set_cookie = first.headers["Set-Cookie"]
    assert set_cookie.startswith(SESSION_COOKIE + "=")
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute.lower() in set_cookie.lower(), set_cookie
    assert "token" not in set_cookie and path.split("=", 1)[1] not in set_cookie
    again = console.request("GET", path)
    assert again.status == 403 and b"already used or expired" in again.body
    assert again.cookie() is None
    me = console.request("GET", "/api/me", cookie=first.cookie()).json()
    assert me["admin"] == "admin" and me["via"] == "session" and len(me["csrf"]) >= 32
    assert console.audited == [("console_session", {"by": "admin", "via": "login token"})]


def test_login_token_expires_and_a_guessed_token_is_refused(console) -> None:
    tokens = console.handle.server.tokens
    now = [1000.0]
    tokens._clock = lambda: now[0]
    url, _ = console.handle.login("admin")
    now[0] += tokens.lifetime + 1
    late = console.request("GET", url.removeprefix(console.origin))
    assert late.status == 403 and late.cookie() is None
    assert console.request("GET", "/login?token=guess").status == 403
    assert console.request("GET", "/login").status == 403
    assert console.audited == []


def test_a_forged_or_expired_session_cookie_is_anonymous(console) -> None:
    forged = console.request("GET", "/api/me", cookie=f"{SESSION_COOKIE}=not-a-session").json()
    assert forged["admin"] is None and forged["via"] == "anonymous" and forged["csrf"] is None
    cookie, _ = console.session()
    sessions = console.handle.server.sessions
    sessions._clock = lambda: 10**12  # long after every expiry
    assert console.request("GET", "/api/me", cookie=cookie).json()["admin"] is None


def test_an_admin_session_with_origin_and_csrf_token_acts(console) -> None:
    cookie, csrf = console.session()
    reply = _post(
        console,
        "/api/decide",
        {"round": 4, "approve": True, "reason": "fine"},
        cookie=cookie,
        csrf=csrf,
    )
    assert reply.status == 200, reply.body
    assert reply.json() == {"ok": True, "detail": "round 4 approved"}
    reply = _post(console, "/api/run/pause", {"run_id": "r1"}, cookie=cookie, csrf=csrf)
    assert reply.status == 200, reply.body
    reply = _post(console, "/api/audit/verify", {}, cookie=cookie, csrf=csrf)
    assert reply.json() == {"ok": True, "entries": 3, "first_broken": None}
    assert console.ops.calls == [
        ("decide", "admin", 4, True, "fine"),
        ("control_run", "admin", "r1", "pause", ""),
        ("verify_audit", "admin"),
    ]


@pytest.mark.parametrize(
    ("origin", "csrf", "reason"),
    [
        ("https://evil.example", "valid", b"cross-origin request"),
        ("null", "valid", b"cross-origin request"),
        (None, "valid", b"needs an Origin header"),
        ("self", None, b"missing CSRF token"),
        ("self", "wrong", b"wrong CSRF token"),
    ],
)
def test_cross_origin_or_tokenless_posts_are_refused_and_change_nothing(
    console, origin, csrf, reason
) -> None:
    cookie, token = console.session()
    presented = token if csrf == "valid" else csrf
    for path, body in [
        ("/api/decide", {"round": 1, "approve": True, "reason": ""}),
        ("/api/revoke", {"name": "client0", "reason": "x"}),
        ("/api/run/stop", {"run_id": "r1"}),
        ("/api/audit/verify", {}),
    ]:
        reply = _post(console, path, body, cookie=cookie, csrf=presented, origin=origin)
        assert reply.status == 403, (path, reply.body)
        assert reason in reply.body, reply.body
    assert console.ops.calls == []


def test_a_cross_site_referer_without_origin_is_refused(console) -> None:
    cookie, csrf = console.session()
    reply = console.request(
        "POST",
        "/api/revoke",
        body={"name": "client0", "reason": "x"},
        headers={"Referer": "https://evil.example/page", "X-CSRF-Token": csrf},
        cookie=cookie,
    )
    assert reply.status == 403 and b"cross-origin" in reply.body
    reply = console.request(
        "POST",
        "/api/revoke",
        body={"name": "client0", "reason": "x"},
        headers={"Referer": console.origin + "/#participants", "X-CSRF-Token": csrf},
        cookie=cookie,
    )
    assert reply.status == 200, reply.body
    assert console.ops.calls == [("revoke", "admin", "client0", "x")]


def test_state_changes_need_post(console) -> None:
    cookie, _ = console.session()
    for path in ("/api/decide", "/api/revoke", "/api/run/stop", "/api/audit/verify"):
        reply = console.request("GET", path, cookie=cookie, headers={"Origin": console.origin})
        assert reply.status == 405, path
    assert console.ops.calls == []


def test_anonymous_viewers_read_but_cannot_act_or_see_the_audit_log(console) -> None:
    me = console.request("GET", "/api/me").json()
    assert me["admin"] is None and me["can_read"] is True and me["csrf"] is None
    assert console.request("GET", "/api/view/federation").json()["name"] == "testfed"
    assert console.request("GET", "/plots/metrics.svg").status == 200
    audit = console.request("GET", "/api/view/audit")
    assert audit.status == 403 and b"administrators only" in audit.body
    assert "audit" not in console.views.reads
    for csrf in (None, "anything"):
        reply = _post(console, "/api/decide", {"round": 1, "approve": True}, csrf=csrf)
        assert reply.status == 403 and b"no administrator identity" in reply.body
    assert console.ops.calls == []


def test_without_anonymous_read_nothing_is_shown_before_sign_in(private_console) -> None:
    console = private_console
    assert console.request("GET", "/").status == 200  # the page shell says how to sign in
    me = console.request("GET", "/api/me").json()
    assert me["can_read"] is False
    for path in ("/api/view/federation", "/api/view/live", "/plots/epsilon.svg", "/events"):
        reply = console.request("GET", path)
        assert reply.status == 401 and b"sealagg console" in reply.body, path
    assert console.views.reads == []
    cookie, _ = console.session()
    assert console.request("GET", "/api/view/audit", cookie=cookie).status == 200


def test_a_client_certificate_is_not_an_admin(console) -> None:
    me = console.request("GET", "/api/me", as_kit="client0").json()
    assert me["admin"] is None and me["via"] == "anonymous"
    assert "client0 is a client's, not an administrator's" in me["note"]
    reply = _post(console, "/api/revoke", {"name": "client1"}, as_kit="client0", csrf="x")
    assert reply.status == 403 and b"not an administrator" in reply.body
    assert console.request("GET", "/api/view/audit", as_kit="client0").status == 403
    assert console.ops.calls == []


def test_an_admin_certificate_is_that_admin(console) -> None:
    me = console.request("GET", "/api/me", as_kit="olga").json()
    assert me["admin"] == "olga" and me["via"] == "certificate" and me["roles"] == ["operator"]
    assert console.request("GET", "/api/view/audit", as_kit="olga").status == 200
    # Still needs the Origin and the CSRF token: a browser holding the certificate would
    # present it to a cross-site request too.
    refused = _post(console, "/api/run/stop", {"run_id": "r9"}, as_kit="olga", csrf="guess")
    assert refused.status == 403 and b"wrong CSRF token" in refused.body
    done = _post(console, "/api/run/stop", {"run_id": "r9"}, as_kit="olga", csrf=me["csrf"])
    assert done.status == 200, done.body
    assert console.ops.calls == [("control_run", "olga", "r9", "stop", "")]


def test_a_certificate_from_another_ca_fails_the_handshake(console, tmp_path) -> None:
    from sealagg.appliance.testing import make_deployment

    other = make_deployment(tmp_path / "other", clients=1)
    console.kits["stranger"] = other.kits["client0"]
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        console.request("GET", "/api/me", as_kit="stranger")


def test_every_response_carries_the_security_headers(console) -> None:
    cookie, _ = console.session()
    for path in ("/", "/static/console.js", "/api/me", "/api/view/live", "/plots/phases.svg"):
        reply = console.request("GET", path, cookie=cookie)
        assert reply.status == 200, path
        csp = reply.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert "no-store" in reply.headers["Cache-Control"], path
    refused = console.request("GET", "/api/view/audit")
    assert refused.headers["X-Frame-Options"] == "DENY"
    page = console.request("GET", "/").body.decode()
    assert "<script>" not in page and "http://" not in page and "https://" not in page


def test_bad_requests_get_clear_answers(console) -> None:
    cookie, csrf = console.session()
    reply = _post(console, "/api/decide", {"round": "x", "approve": True}, cookie=cookie, csrf=csrf)
    assert reply.status == 400 and b"round must be a whole number" in reply.body
    reply = _post(console, "/api/run/explode", {"run_id": "r1"}, cookie=cookie, csrf=csrf)
    assert reply.status == 404 and b"no run action" in reply.body
    assert console.request("GET", "/api/view/nope", cookie=cookie).status == 400
    assert console.request("GET", "/plots/nope.svg").status == 404
    assert console.request("GET", "/static/../../etc/passwd").status == 404
    assert console.ops.calls == []


def test_events_stream_the_live_view_when_it_changes(console) -> None:
    import http.client
    import json

    connection = http.client.HTTPSConnection(
        "127.0.0.1", console.port, context=console.tls(), timeout=10
    )
    try:
        connection.request("GET", "/events")
        response = connection.getresponse()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-Frame-Options"] == "DENY"

        def next_event() -> tuple[str, dict]:
            lines: list[str] = []
            while True:
                line = response.readline().decode().rstrip("\n")
                if line == "" and lines:
                    break
                if line and not line.startswith(":"):
                    lines.append(line)
            fields = dict(line.split(": ", 1) for line in lines)
            return fields["event"], json.loads(fields["data"])

        assert next_event() == ("live", console.views.live)
        console.views.live = {"round": {"number": 7, "phase": "share_keys"}}
        started = time.monotonic()
        event, data = next_event()
        assert event == "live" and data["round"]["phase"] == "share_keys"
        assert time.monotonic() - started < 3
    finally:
        connection.close()


def test_a_failing_view_is_a_500_with_the_security_headers(console, monkeypatch) -> None:
    def broken(name, args=None):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(console.views, "view", broken)
    reply = console.request("GET", "/api/view/runs")
    assert reply.status == 500 and b"database is locked" in reply.body
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert "no-store" in reply.headers["Cache-Control"]
