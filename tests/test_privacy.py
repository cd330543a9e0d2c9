"""One user's cookie, Authorization-protected page or private page never reaches another client."""

import threading

from .conftest import client


def personal_app(environ, start_response):
    """Renders per-user pages the way real apps do, some of them carelessly."""
    path = environ["PATH_INFO"]
    cookie = environ.get("HTTP_COOKIE", "")
    user = "alice" if "user=alice" in cookie else None
    auth = environ.get("HTTP_AUTHORIZATION")
    headers = [("Content-Type", "text/plain")]
    if path == "/welcome":                      # logs alice in on a public page
        body = "welcome"
        if environ.get("HTTP_X_LOGIN") == "alice":
            headers.append(("Set-Cookie", "user=alice; HttpOnly"))
            headers.append(("Set-Cookie", "csrf=alice-secret-token"))
    elif path == "/account":                    # depends on Authorization, says nothing about caching
        body = f"account of {auth}" if auth else "please log in"
    elif path == "/dashboard":                  # per-user, marked private
        body = f"dashboard of {user}" if user else "dashboard of nobody"
        headers.append(("Cache-Control", "private"))
    else:
        body = "public"
    start_response("200 OK", headers)
    return [body.encode()]


def test_no_personal_data_reaches_another_client(make):
    middleware = make(personal_app, "/ 300 600")
    alice = client(middleware)
    bob = client(middleware)

    assert alice.get("/welcome", headers={"X-Login": "alice"}).headers.getall("Set-Cookie")
    assert alice.get("/account", headers={"Authorization": "Basic YWxpY2U="}).body == b"account of Basic YWxpY2U="
    assert alice.get("/dashboard", headers={"Cookie": "user=alice"}).body == b"dashboard of alice"

    welcome = bob.get("/welcome")               # alice's answer set cookies: it was not stored
    assert welcome.headers["X-Cache"] == "MISS" and "Set-Cookie" not in welcome.headers
    welcome = client(middleware).get("/welcome")  # bob's was
    assert welcome.headers["X-Cache"] == "HIT" and "Set-Cookie" not in welcome.headers
    assert bob.get("/account").body == b"please log in"
    assert bob.get("/dashboard").body == b"dashboard of nobody"


def test_interleaved_users_under_concurrency(make):
    middleware = make(personal_app, "/ 300 600")
    leaks, barrier = [], threading.Barrier(16)

    def visit(number):
        browser = client(middleware)
        is_alice = number % 2 == 0
        barrier.wait()
        for _ in range(20):
            if is_alice:
                browser.get("/account", headers={"Authorization": "Basic YWxpY2U="})
                browser.get("/dashboard", headers={"Cookie": "user=alice"})
                browser.get("/welcome", headers={"X-Login": "alice"})
            else:
                for path in ("/account", "/dashboard", "/welcome"):
                    response = browser.get(path)
                    if b"alice" in response.body or "alice" in " ".join(response.headers.getall("Set-Cookie")):
                        leaks.append((path, response.body, response.headers.items()))

    threads = [threading.Thread(target=visit, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert leaks == []
    assert middleware.stats["hits"] > 0 and middleware.stats["bypasses"] > 0
