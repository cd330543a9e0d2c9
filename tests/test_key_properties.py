"""Two requests share a stored page only when the application would route them
to the same page (hypothesis).

The application below renders, as its page, what real frameworks read from a
request: the scheme, the host (case-insensitive, default port dropped), the
script name, the path as URL dispatch reads it (raw) and as Pyramid's
traversal resolves it (dot and empty segments), the query as WebOb parses it
(split at ``&`` and ``;``, names decoded), the cookies as WebOb parses them,
``Authorization`` and ``REMOTE_USER``. The configured equivalences are part of
that reading, because they are the user's word that those differences do not
change the page: ``ignore_query`` names are left out, ``sort_query`` makes the
order of different names irrelevant (not of repeated ones), and with
``bypass_cookies`` only the named cookies matter.

Every generated sequence of requests goes through the middleware, and every
answer (stored, served from the cache or passed through) must be the page the
application renders for that very request: a request served a page stored for
another one that reads differently fails the test.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from hypothesis import HealthCheck, given, settings, strategies as st
from pyramid.traversal import split_path_info
from webob import Request

from pagecache import PageCacheMiddleware
from pagecache.backends import MemoryCache

from .conftest import Clock

DEFAULT_PORTS = {"http": "80", "https": "443"}


def reading(environ: Dict, config: Dict) -> Tuple:
    """What an application routes on and renders from, under ``config``'s equivalences."""
    request = Request(environ)
    scheme = environ["wsgi.url_scheme"]
    host = environ.get("HTTP_HOST", "").lower()
    if host.endswith(":" + DEFAULT_PORTS[scheme]):
        host = host.rsplit(":", 1)[0]
    path = environ["PATH_INFO"]
    try:
        traversal = split_path_info(path.encode("latin-1").decode("utf-8"))
    except (UnicodeError, ValueError):
        traversal = ("<undecodable>",)
    ignored = set(config.get("ignore_query", "").split())
    query = [(name, value) for name, value in request.GET.items() if name not in ignored]
    if config.get("sort_query"):
        query.sort(key=lambda item: item[0])
    cookies = sorted(request.cookies.items())
    named = set(config.get("bypass_cookies", "").split())
    if named:
        cookies = [(name, value) for name, value in cookies if name in named]
    return (scheme, host, environ.get("SCRIPT_NAME", ""), path, traversal, query, cookies,
            environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_USER"))


def reading_app(config: Dict):
    def app(environ, start_response):
        body = repr(reading(environ, config)).encode("utf-8", "backslashreplace")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return app


# Small alphabets, so that different requests that read alike, and alike ones
# that read differently, come up often.
segments = st.sampled_from(["a", "b", ".", "..", "", "a;x", "a%2fb", "a/b", "\\", "A", "%61", "\xe9", "\xc3\xa9"])
paths = st.lists(segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
query_parts = st.sampled_from(["a=1", "a=2", "b=1", "%61=1", "utm_source=x", "utm_source=x;a=3", "a=1;b=2",
                               "a", "a=", "=1", "a+b=1", "a%20b=1", "b=1&a=1", ""])
queries = st.lists(query_parts, max_size=3).map("&".join)
hosts = st.sampled_from(["example.com", "EXAMPLE.com", "example.com:80", "example.com:8080", "example.com.",
                         "victim.example/static", "a b", "example.com, other", "[::1]:80", "[::1]", "127.0.0.1"])
cookie_headers = st.sampled_from([None, "", "_ga=1", "_ga=2", "session=x", "_ga=1; session=x", "_ga=1, session=x",
                                  "_ga=1 session=x", "session", '_ga="x; session=y"', ";", "a=b;;"])
requests = st.fixed_dictionaries({
    "PATH_INFO": paths, "QUERY_STRING": queries, "HTTP_HOST": hosts,
    "wsgi.url_scheme": st.sampled_from(["http", "https"]),
    "SCRIPT_NAME": st.sampled_from(["", "/app"]),
    "HTTP_COOKIE": cookie_headers,
    "HTTP_AUTHORIZATION": st.sampled_from([None, None, None, "Basic YWxpY2U6eA=="]),
    "REMOTE_USER": st.sampled_from([None, None, None, "alice"]),
})
configs = st.fixed_dictionaries({
    "ignore_query": st.sampled_from(["", "utm_source"]),
    "sort_query": st.booleans(),
    "bypass_cookies": st.sampled_from(["", "session"]),
})


def environ_of(spec: Dict) -> Dict:
    environ = {"REQUEST_METHOD": "GET", "SERVER_NAME": "example.com", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "wsgi.errors": None}
    environ.update({name: value for name, value in spec.items() if value is not None})
    return environ


def serve(app, environ: Dict) -> Tuple[bytes, str]:
    found: List = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: found.append(dict(headers))))
    return body, found[0].get("X-Cache", "")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, st.lists(requests, min_size=2, max_size=8))
def test_a_request_is_only_ever_served_the_page_the_application_renders_for_it(config, specs):
    options = {name: value for name, value in config.items() if value}
    middleware = PageCacheMiddleware(reading_app(config), "/ 60 60", MemoryCache(), clock=Clock(), **options)
    labels = []
    for spec in specs * 2:  # each request again, once pages are stored
        environ = environ_of(spec)
        expected = repr(reading(dict(environ), config)).encode("utf-8", "backslashreplace")
        body, label = serve(middleware, environ)
        labels.append(label)
        assert body == expected, (label, spec)
    assert set(labels) <= {"MISS", "HIT", "BYPASS"}


def test_the_generated_requests_do_share_pages():
    """The property above is not vacuous: requests that read alike share a page."""
    config = {"ignore_query": "utm_source", "sort_query": True, "bypass_cookies": "session"}
    middleware = PageCacheMiddleware(reading_app(config), "/ 60 60", MemoryCache(), clock=Clock(),
                                     ignore_query="utm_source", sort_query=True, bypass_cookies="session")
    first = {"PATH_INFO": "/a", "QUERY_STRING": "b=1&a=1&utm_source=x", "HTTP_HOST": "EXAMPLE.com:80",
             "wsgi.url_scheme": "http", "HTTP_COOKIE": "_ga=1"}
    second = {"PATH_INFO": "/a", "QUERY_STRING": "a=1&b=1", "HTTP_HOST": "example.com",
              "wsgi.url_scheme": "http", "HTTP_COOKIE": "_ga=2"}
    assert serve(middleware, environ_of(first))[1] == "MISS"
    assert serve(middleware, environ_of(second))[1] == "HIT"
