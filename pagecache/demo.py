"""The demo application of ``development.ini`` (``use = egg:pagecache#demo``):
a few slow pages that show, in the browser, what the cache did.

Each page takes ``delay`` seconds to render and says when, by which process
and as which render it was made. The body is what pagecache stores, so it
can't say whether *this* load came from the cache; the page's script reads
that from the ``Server-Timing`` header pagecache sends with ``server_timing =
true`` (``cache;desc="HIT", age;desc="3", ttl;desc="7"``), through the Navigation
Timing API, and counts down the time the page has left. A burst button sends
eight simultaneous requests and lists what each got (``X-Cache`` and ``Age``),
to watch coalescing (a cold URL: one MISS, the others wait for it and HIT)
and grace (an expired page: one MISS rebuilds it, the others get STALE).

Pages: ``/``, ``/news``, ``/private`` (``Cache-Control: private``: never
stored), ``/uncached/`` (a ``pass`` rule in development.ini) and ``/burst``
(the burst's target). Anything else, ``/favicon.ico`` included, is a quick
404. The pages set no cookies.

Each page greets its visitor by the name they chose (a small form that sends
``GET /_demo/name?name=...&back=<page>``, which sets the cookie ``demo_name``
and redirects back: a GET, as a language switcher is, because nothing changes
on the server; a POST's success would make pagecache invalidate the page its
redirect leads to, a render for everybody), and a request with a cookie may
not be given a page meant for everybody: so the
cached pages are shared Edge Side Includes pages. When pagecache renders one
for the cache (its request says ``Surrogate-Capability: ...ESI/1.0``), the
page says ``Cache-Control: public`` and ``Surrogate-Control:
content="ESI/1.0"``, and its greeting is a hole, ``<esi:include
src="/_demo/greeting?back=..."/>``, which pagecache fills for each request
from ``/_demo/greeting``, a fragment no rule caches, rendered in no time from
the request's cookie. A visitor thus gets the page from the cache (the status
box says HIT, the render time stays) with their own name in it. A request
that no surrogate will process (``/private``, ``/uncached/``, the demo
without pagecache) gets the greeting inline, as the Edge Architecture
specification says an application should.
"""

from __future__ import annotations

import html
import itertools
import os
import threading
import time
from typing import Callable, Dict, Iterable, NamedTuple, Optional, Tuple
from urllib.parse import parse_qs, quote, unquote

from .entry import Headers


#: The dashboard (pagecache's stats_path in development.ini).
DASHBOARD = "/_pagecache/stats"

#: The personal greeting fragment, and where its form sets the visitor's name.
GREETING = "/_demo/greeting"
NAME_FORM = "/_demo/name"
#: The cookie holding the name, and the longest name kept.
NAME_COOKIE = "demo_name"
NAME_MAX = 40
ESI_MARKER = ("Surrogate-Control", 'content="ESI/1.0"')


class DemoPage(NamedTuple):
    title: str
    rule: str   # what development.ini's rule does with it, in words
    try_it: str  # the paragraph saying what to try (HTML)
    private: bool = False


PAGES: Dict[str, DemoPage] = {
    "/": DemoPage(
        "Front page", "cached 5 s, then 30 s of grace",
        "Reload this page. The first load after a while is a <b>MISS</b> and takes a second: the "
        "application rendered it. Reloads within 5 seconds are <b>HIT</b>s: the render time below stays, "
        "the status box shows the page's age and counts down the time it has left. Then press "
        "<b>Send a burst</b>: eight requests at once for a page nobody has asked for yet get one MISS (one "
        "render) and seven HITs (they waited for it). The dashboard shows the counters as they move. Give the "
        "demo your name above and reload: still a <b>HIT</b>, the same render, with your name in it (the "
        "greeting is an ESI fragment, rendered for each request; the page around it comes from the cache)."),
    "/news": DemoPage(
        "News", "cached 10 s, then a minute of grace",
        "This page is fresh for 10 seconds, then has a minute of grace. Reload within 10 s: <b>HIT</b>. "
        "Wait until the countdown says it has expired, choose <i>this page</i> and send a burst: one "
        "request rebuilds it (<b>MISS</b>, a second) while the seven others get the old copy at once "
        "(<b>STALE</b>). Reload again: a HIT with the new render time."),
    "/private": DemoPage(
        "Private page", "answers Cache-Control: private, so it is never stored",
        "This page says <code>Cache-Control: private</code>, so pagecache never stores it: every load is a "
        "<b>MISS</b> and takes a second, and a burst gets eight MISSes, each rendered on its own.",
        private=True),
    "/uncached/": DemoPage(
        "Uncached page", "a pass rule: pagecache leaves it alone",
        "A <code>pass</code> rule keeps this page out of the cache: every load goes to the application "
        "and takes a second, and a burst gets eight renders. pagecache labels it BYPASS, or not at all "
        "(then the status says <i>unknown</i>)."),
    "/burst": DemoPage(
        "Burst target", "cached 5 s, then 30 s of grace",
        "The target of the bursts: each <code>/burst?n=&hellip;</code> is a page of its own, cold until a "
        "burst asks for it, rendered once for all of them. Reload: HIT for 5 seconds."),
}

NAVIGATION = ("/", "/news", "/private", "/uncached/")

#: Requests in a burst (the script's BURST).
BURST = 8

STYLE = """
:root { --ink: #1d2330; --muted: #667085; --line: #e3e6ec; --card: #fff; --bg: #f6f7f9;
  --hit: #1a7f37; --stale: #b35c00; --miss: #2f5fd0; --bypass: #7a42c9; --none: #667085; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
nav { display: flex; flex-wrap: wrap; gap: 4px 18px; padding: 12px 24px; background: var(--card);
  border-bottom: 1px solid var(--line); }
nav a { color: var(--miss); text-decoration: none; } nav a[aria-current] { font-weight: 700; color: var(--ink); }
nav .dashboard { margin-left: auto; }
main { max-width: 880px; margin: 0 auto; padding: 8px 24px 40px; }
h1 { margin: 18px 0 4px; } .rule { color: var(--muted); margin: 0 0 14px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px;
  margin: 14px 0; }
h2 { font-size: 15px; margin: 0 0 8px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.status { display: grid; grid-template-columns: auto 1fr; gap: 6px 22px; align-items: center; }
.label { grid-row: span 3; font-size: 38px; font-weight: 750; min-width: 170px; text-align: center;
  border-radius: 8px; padding: 10px 16px; color: #fff; background: var(--none); }
.label.hit { background: var(--hit); } .label.stale { background: var(--stale); }
.label.miss { background: var(--miss); } .label.bypass { background: var(--bypass); }
.status dl { margin: 0; display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; }
.status dt { color: var(--muted); } .status dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
.note { margin: 0; color: var(--muted); font-size: 14px; }
.rendered { font-size: 14px; color: var(--muted); }
.greeting:empty { display: none; }
.greeting { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 18px; background: var(--card);
  border: 1px solid var(--line); border-left: 4px solid var(--hit); border-radius: 8px; padding: 10px 16px;
  margin: 14px 0; }
.greeting p { margin: 0; flex: 1 1 320px; } .greeting form { display: flex; gap: 8px; align-items: center; margin: 0; }
.greeting input[type=text] { font: inherit; padding: 5px 8px; border: 1px solid var(--line); border-radius: 6px;
  width: 11em; }
.greeting .forget { background: transparent; color: var(--miss); }
fieldset { border: 0; padding: 0; margin: 0 0 10px; } fieldset label { display: block; }
button { font: inherit; padding: 6px 16px; border-radius: 6px; border: 1px solid var(--miss);
  background: var(--miss); color: #fff; cursor: pointer; } button:disabled { opacity: .6; cursor: wait; }
#burst-summary { margin-left: 12px; font-weight: 600; }
ol.results { padding-left: 28px; font-variant-numeric: tabular-nums; }
ol.results li { padding: 1px 0; }
.tag { display: inline-block; min-width: 64px; text-align: center; font-size: 13px; font-weight: 700;
  border-radius: 4px; padding: 0 6px; color: #fff; background: var(--none); margin-right: 8px; }
.tag.hit { background: var(--hit); } .tag.stale { background: var(--stale); }
.tag.miss { background: var(--miss); } .tag.bypass { background: var(--bypass); }
code { font-size: 90%; }
"""

# Reads the Server-Timing pagecache sent with this page, counts down, and runs bursts.
SCRIPT = r"""
"use strict";
(function () {
  var CLASSES = {HIT: "hit", STALE: "stale", MISS: "miss", BYPASS: "bypass"};
  var BURST = 8;
  var loaded = Date.now();

  function $(id) { return document.getElementById(id); }
  function seconds(n) { return n + (n === 1 ? " second" : " seconds"); }

  // age;dur=3 (the duration) or age;desc="3" (a number as the description)
  function metricValue(e) {
    var text = String(e.description || "").trim();
    if (text !== "" && isFinite(Number(text))) return Number(text);
    return typeof e.duration === "number" && isFinite(e.duration) ? e.duration : null;
  }

  function timing() {
    var found = {label: null, age: null, ttl: null};
    var entry = (performance.getEntriesByType ? performance.getEntriesByType("navigation") : [])[0];
    var entries = entry && entry.serverTiming ? entry.serverTiming : [];
    for (var i = 0; i < entries.length; i++) {
      var e = entries[i];
      if (e.name === "cache" && e.description) found.label = String(e.description).toUpperCase();
      if (e.name === "age" || e.name === "ttl") found[e.name] = metricValue(e);
    }
    if (entry && entry.responseStart && entry.requestStart) found.wait = entry.responseStart - entry.requestStart;
    return found;
  }

  function parseLabel(header) {
    // The "cache" metric of a Server-Timing header: cache;desc="HIT"
    var match = /(?:^|,)\s*cache\s*;[^,]*?desc\s*=\s*"?([A-Za-z]+)/.exec(header || "");
    return match ? match[1].toUpperCase() : null;
  }

  var status = timing();
  function showStatus() {
    var label = $("cache-label"), age = $("cache-age"), left = $("cache-ttl"), note = $("cache-note");
    label.textContent = status.label || "unknown";
    label.className = "label " + (CLASSES[status.label] || "");
    var fresh = status.label === "MISS" || status.label === "BYPASS";
    age.textContent = status.age !== null ? seconds(Math.round(status.age))
      : fresh ? "none (just rendered)" : "unknown";
    if (status.ttl === null) {
      left.textContent = status.label === "MISS" ? "its rule's TTL, if it may be stored" : "unknown";
    } else {
      var now = status.ttl - (Date.now() - loaded) / 1000;
      left.textContent = now > 0 ? seconds(Math.ceil(now))
        : "expired " + seconds(Math.floor(-now))
          + " ago: the next request rebuilds it, the others meanwhile get it STALE";
    }
    var words = {
      HIT: "This load came from the cache: the application was not called.",
      STALE: "This load came from the cache after the page's TTL: another request is rebuilding it (grace).",
      MISS: "This load called the application, which rendered the page.",
      BYPASS: "A rule matched, but this request may not use the cache."
    };
    note.textContent = status.label
      ? (words[status.label] || "") + (status.wait ? " The server answered in " + Math.round(status.wait) + " ms." : "")
      : "No Server-Timing header came with this page: pagecache sends it with server_timing = true "
        + "in its [filter:pagecache] section (and not for URLs that no rule, or a pass rule, covers).";
  }
  showStatus();
  setInterval(showStatus, 250);

  function burstUrl() {
    var chosen = document.querySelector('input[name="target"]:checked');
    if (chosen && chosen.value === "page") return location.pathname + location.search;
    return "/burst?n=" + Math.floor(Math.random() * 1e9);
  }

  function item(list, i, url) {
    var li = document.createElement("li"), tag = document.createElement("span"), text = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "\u2026";
    text.textContent = "GET " + url;
    li.appendChild(tag);
    li.appendChild(text);
    list.appendChild(li);
    return {li: li, tag: tag, text: text};
  }

  function burst() {
    var button = $("burst-button"), list = $("burst-results"), summary = $("burst-summary");
    var url = burstUrl(), counts = {}, done = 0;
    button.disabled = true;
    while (list.firstChild) list.removeChild(list.firstChild);
    summary.textContent = "sending " + BURST + " requests for " + url + " at once\u2026";
    list.setAttribute("data-url", url);
    function finish(row, label, detail) {
      row.tag.textContent = label;
      row.tag.className = "tag " + (CLASSES[label] || "");
      row.li.setAttribute("data-label", label);
      row.text.textContent = "GET " + url + " \u2014 " + detail;
      counts[label] = (counts[label] || 0) + 1;
      done += 1;
      if (done === BURST) {
        summary.textContent = Object.keys(counts).sort().map(function (k) { return counts[k] + " " + k; }).join(", ");
        button.disabled = false;
      }
    }
    for (var i = 0; i < BURST; i++) {
      (function (row) {
        var started = performance.now();
        fetch(url, {cache: "no-store", credentials: "same-origin", headers: {Accept: "text/html"}})
          .then(function (response) {
            return response.text().then(function () {
              var label = response.headers.get("X-Cache")
                || parseLabel(response.headers.get("Server-Timing")) || "none";
              var age = response.headers.get("Age");
              finish(row, label.toUpperCase(), "status " + response.status + ", Age " + (age === null ? "none" : age)
                + ", " + Math.round(performance.now() - started) + " ms");
            });
          })
          .catch(function (error) { finish(row, "ERROR", String(error && error.message || error)); });
      })(item(list, i, url));
    }
  }
  $("burst-button").addEventListener("click", burst);
})();
"""


def _nav(path: str) -> str:
    links = []
    for target in NAVIGATION:
        current = ' aria-current="page"' if target == path else ""
        links.append(f'<a href="{target}"{current}>{html.escape(PAGES[target].title)}</a>')
    links.append(f'<a class="dashboard" href="{DASHBOARD}">Cache dashboard</a>')
    return "<nav>" + "".join(links) + "</nav>"


def visitor_name(environ: Dict) -> str:
    """The name the visitor chose (the ``demo_name`` cookie), or ``""``."""
    for pair in environ.get("HTTP_COOKIE", "").replace(",", ";").split(";"):
        key, _, value = pair.strip().partition("=")
        if key == NAME_COOKIE:
            return clean_name(unquote(value.strip().strip('"'), errors="replace"))
    return ""


def clean_name(name: str) -> str:
    """A name as the demo keeps it: printable, spaces collapsed, at most NAME_MAX characters."""
    return " ".join("".join(c if c.isprintable() else " " for c in name).split())[:NAME_MAX]


def back_to(path: Optional[str]) -> str:
    """The demo page to go back to after the name form: a known page, else the front page."""
    return path if path in PAGES else "/"


def greeting(name: str, back: str, inline: bool = False) -> str:
    """The visitor's greeting and the form that changes their name (HTML);
    ``inline``: in a page rendered for this request alone, not as a fragment."""
    back_field = f'<input type="hidden" name="back" value="{html.escape(back_to(back))}">'
    if name:
        how = ("This page was rendered for you alone, greeting included." if inline else
               "This line is a fragment rendered for you on every load, in a page that may come from the cache.")
        hello = f'<p id="hello">Hello, <b id="visitor-name">{html.escape(name)}</b>! {how}</p>'
        button, forget = "Change name", (f'<form method="get" action="{NAME_FORM}">{back_field}'
                                         f'<input type="hidden" name="name" value="">'
                                         f'<button type="submit" class="forget">Forget me</button></form>')
    else:
        hello = ('<p id="hello">Hello, stranger! Tell the demo your name: every page then greets you by it '
                 '(a cookie), and still comes from the cache.</p>')
        button, forget = "Greet me", ""
    return (f'{hello}<form method="get" action="{NAME_FORM}">{back_field}'
            f'<label for="name-input">Your name</label>'
            f'<input type="text" id="name-input" name="name" value="{html.escape(name)}" maxlength="{NAME_MAX}" '
            f'autocomplete="off"><button type="submit">{button}</button></form>{forget}')


def greeting_include(path: str) -> str:
    """The hole pagecache fills with the visitor's greeting (ESI)."""
    return f'<esi:include src="{GREETING}?back={quote(back_to(path), safe="/")}"/>'


def render(path: str, page: DemoPage, rendered: str, pid: int, number: int, delay: float,
           personal: str = "") -> bytes:
    """The HTML of a demo page; ``personal`` is what the greeting holds (HTML:
    the greeting itself, or an ESI include of it)."""
    this_page = html.escape(path)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(page.title)} &middot; pagecache demo</title>
<style>{STYLE}</style>
</head><body>
{_nav(path)}
<main>
<h1>{html.escape(page.title)}</h1>
<p class="rule">{html.escape(path)}: {html.escape(page.rule)}.</p>
<div id="greeting" class="greeting">{personal}</div>
<section aria-labelledby="status-title"><h2 id="status-title">This page load</h2>
<div class="status" id="cache-status" aria-live="polite">
<div class="label" id="cache-label">unknown</div>
<dl><dt>Age</dt><dd id="cache-age">unknown</dd><dt>Time left</dt><dd id="cache-ttl">unknown</dd></dl>
<p class="note" id="cache-note">This box needs JavaScript, which reads the Server-Timing header.</p>
</div></section>
<p class="rendered">Rendered at <b>{rendered}</b> by process {pid} (render #{number}, which took {delay:g}s).</p>
<p class="try">{page.try_it}</p>
<section aria-labelledby="burst-title"><h2 id="burst-title">Many visitors at once</h2>
<fieldset><legend>Send {BURST} simultaneous requests to</legend>
<label><input type="radio" name="target" value="cold" checked> a cold page: a new <code>/burst?n=&hellip;</code>
each time (coalescing: one MISS, the others wait and HIT)</label>
<label><input type="radio" name="target" value="page"> this page, <code>{this_page}</code> (once it has expired:
one MISS rebuilds it, the others get STALE)</label>
</fieldset>
<button type="button" id="burst-button">Send a burst</button><span id="burst-summary"></span>
<ol class="results" id="burst-results"></ol>
</section>
</main>
<script>{SCRIPT}</script>
</body></html>
""".encode("utf-8")


NOT_FOUND = (b"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not found &middot; "
             b"pagecache demo</title></head><body><h1>Not found</h1><p>The demo has no such page. "
             b"<a href=\"/\">Back to the front page</a>.</p></body></html>\n")


class DemoApp:
    """The demo's pages, each taking ``delay`` seconds to render (:meth:`pause`)."""

    def __init__(self, delay: float = 1.0):
        self.delay = delay
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def pause(self, path: str) -> None:
        """The slow part of rendering ``path``: ``delay`` seconds."""
        if self.delay > 0:
            time.sleep(self.delay)

    def __call__(self, environ: Dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == GREETING:
            return self.serve_greeting(environ, start_response, method)
        if path == NAME_FORM:
            return self.serve_name_form(environ, start_response, method)
        page = PAGES.get(path)
        if page is None:
            return self._answer(start_response, "404 Not Found", NOT_FOUND, method)
        if method not in ("GET", "HEAD"):
            return self._answer(start_response, "405 Method Not Allowed", b"GET or HEAD\n", method,
                                [("Allow", "GET, HEAD")], "text/plain; charset=utf-8")
        with self._lock:
            number = next(self._count)
        self.pause(path)
        headers: Headers = [("Cache-Control", "private")] if page.private else []
        if not page.private and "ESI/1.0" in environ.get("HTTP_SURROGATE_CAPABILITY", ""):
            # rendered for a cache that fills the greeting in for each request: one page for everybody
            personal = greeting_include(path)
            headers += [("Cache-Control", "public"), ESI_MARKER]
        else:
            name = visitor_name(environ)
            personal = greeting(name, path, inline=True)
            if name and not page.private:
                headers.append(("Cache-Control", "private"))  # it holds the visitor's name
        body = render(path, page, time.strftime("%H:%M:%S"), os.getpid(), number, self.delay, personal)
        return self._answer(start_response, "200 OK", body, method, headers)

    def serve_greeting(self, environ: Dict, start_response: Callable, method: str) -> Iterable[bytes]:
        """``GET /_demo/greeting?back=<page>``: the visitor's greeting (a fragment, rendered at once)."""
        if method not in ("GET", "HEAD"):
            return self._answer(start_response, "405 Method Not Allowed", b"GET or HEAD\n", method,
                                [("Allow", "GET, HEAD")], "text/plain; charset=utf-8")
        back = parse_qs(environ.get("QUERY_STRING", "")).get("back", ["/"])[0]
        body = greeting(visitor_name(environ), back).encode("utf-8")
        return self._answer(start_response, "200 OK", body, method, [("Cache-Control", "private")])

    def serve_name_form(self, environ: Dict, start_response: Callable, method: str) -> Iterable[bytes]:
        """``GET /_demo/name?name=...&back=<page>``: sets (or, empty, forgets) the
        visitor's name, then sends them back to the page they were on."""
        if method not in ("GET", "HEAD"):
            return self._answer(start_response, "405 Method Not Allowed", b"GET or HEAD\n", method,
                                [("Allow", "GET, HEAD")], "text/plain; charset=utf-8")
        fields = parse_qs(environ.get("QUERY_STRING", ""))
        name = clean_name(fields.get("name", [""])[0])
        back = back_to(fields.get("back", ["/"])[0])
        if name:
            cookie = f"{NAME_COOKIE}={quote(name, safe='')}; Path=/; Max-Age=31536000; SameSite=Lax"
        else:
            cookie = f"{NAME_COOKIE}=; Path=/; Max-Age=0; SameSite=Lax"
        body = f"Back to {back}\n".encode("utf-8")
        return self._answer(start_response, "303 See Other", body, method,
                            [("Location", back), ("Set-Cookie", cookie), ("Cache-Control", "no-store")],
                            "text/plain; charset=utf-8")

    @staticmethod
    def _answer(start_response: Callable, status: str, body: bytes, method: str, extra: Iterable[Tuple[str, str]] = (),
                content_type: str = "text/html; charset=utf-8") -> Iterable[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))] + list(extra))
        return [] if method == "HEAD" else [body]
