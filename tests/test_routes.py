"""Routes: a URL's rule and page key, worked out once and remembered within bounds."""

from pagecache import routes as routes_module
from pagecache.keys import Keys, request_url
from pagecache.routes import Routes
from pagecache.rules import parse_rules


def make_routes() -> Routes:
    return Routes(parse_rules("/news/ 30 60\n~^/item/\\d+$ 10 10"), Keys("t"), "utf-8")


def environ(path: str, query: str = "", host: str = "example.com") -> dict:
    return {"PATH_INFO": path, "QUERY_STRING": query, "HTTP_HOST": host, "SCRIPT_NAME": "",
            "wsgi.url_scheme": "http"}


def test_a_route_holds_the_rule_and_the_key_a_request_gets():
    routes, keys = make_routes(), Keys("t")
    request = environ("/news/today", "page=2")
    route = routes[request_url(request)]
    assert route.rule.pattern == "/news/"
    assert route.digest == keys.digest(request)
    assert route.key == keys.page(keys.digest(request))
    assert routes[request_url(environ("/item/42"))].rule.pattern == "~^/item/\\d+$"
    uncovered = routes[request_url(environ("/about"))]
    assert (uncovered.rule, uncovered.key) == (None, "")


def test_the_same_url_is_worked_out_once(monkeypatch):
    routes = make_routes()
    url = request_url(environ("/news/a"))
    first = routes[url]

    def again(url):
        raise AssertionError(f"{url} worked out again")
    monkeypatch.setattr(routes, "route", again)
    assert routes[url] is first


def test_the_table_is_bounded_and_long_urls_are_not_kept(monkeypatch):
    monkeypatch.setattr(routes_module, "MAX_ROUTES", 10)
    routes = make_routes()
    for number in range(25):
        routes[request_url(environ(f"/news/{number}"))]
        assert len(routes) <= 10
    routes.clear()
    long_url = request_url(environ("/news/" + "x" * routes_module.MAX_URL_LENGTH))
    assert routes[long_url].rule.pattern == "/news/"
    assert len(routes) == 0


def test_host_without_http_host_comes_from_server_name_and_port():
    request = {"PATH_INFO": "/news/", "SERVER_NAME": "example.com", "SERVER_PORT": "80"}
    assert request_url(request) == ("/news/", "", "example.com:80", "", "http")
    assert Keys("t").digest(request) == Keys("t").digest(environ("/news/"))
