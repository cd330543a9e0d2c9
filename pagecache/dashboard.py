"""The dashboard: one self-contained HTML page that shows pagecache's counters
live, for browsers asking ``stats_path`` for HTML.

:func:`page` gives the document. It holds no data: its script fetches the
stats snapshot (JSON) from the URL it is given every 2 seconds and builds the
view with ``textContent`` only, so URLs and reasons, which clients choose,
are always shown as text. Every key of the snapshot may be missing (older
versions send fewer): the view shows what it has. The page carries its own
Content-Security-Policy (a ``<meta>`` allowing exactly its inline style and
script, and connections to its own origin); :data:`HEADERS` are the response
headers to send with it, the same policy included.

There is no build step and no framework: the style sheet and the script below
are the whole front end, and the chart is SVG drawn by hand.
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import List, Tuple

STYLE = """
:root { --bg: #f6f7f9; --card: #fff; --ink: #1d2330; --muted: #667085; --line: #e3e6ec;
  --hit: #1a7f37; --stale: #b35c00; --miss: #2f5fd0; --bypass: #7a42c9; --bad: #c0262d; --chart: #1a7f37;
  --bars: #dfe5ee; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #14171d; --card: #1c2029; --ink: #e6e9ef; --muted: #98a2b3; --line: #2c3240;
    --hit: #4ac26b; --stale: #e3a140; --miss: #7ea2ff; --bypass: #b58cf0; --bad: #ff6b6b; --chart: #4ac26b;
    --bars: #2c3444; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 18px; padding: 14px 22px 6px; }
header h1 { font-size: 20px; margin: 0; }
header .meta { color: var(--muted); }
main { padding: 6px 22px 22px; display: grid; gap: 14px; grid-template-columns: repeat(12, 1fr); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
  min-width: 0; grid-column: span 12; }
section h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
  margin: 0 0 8px; font-weight: 600; }
#ratio-card { grid-column: span 4; }
#chart-card { grid-column: span 8; }
#servers-card { grid-column: span 4; }
#totals-card { grid-column: span 8; }
@media (max-width: 900px) { #ratio-card, #chart-card, #servers-card, #totals-card { grid-column: span 12; } }
.big { font-size: 46px; font-weight: 650; line-height: 1.1; color: var(--hit); font-variant-numeric: tabular-nums; }
.caption { color: var(--muted); }
.latest { margin-top: 14px; font-size: 15px; font-weight: 550; }
#error { grid-column: span 12; background: #fdecec; color: #8a1c1c; border: 1px solid #f2b8b8;
  border-radius: 8px; padding: 10px 14px; font-weight: 550; }
#error[hidden] { display: none; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(118px, 1fr)); gap: 8px; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: 6px 9px; }
.tile .n { font-size: 19px; font-weight: 600; font-variant-numeric: tabular-nums; }
.tile .k { color: var(--muted); font-size: 12px; }
.tile.warn .n { color: var(--bad); }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; table-layout: auto; }
th, td { text-align: right; padding: 4px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { color: var(--muted); font-weight: 600; font-size: 12px; }
th:first-child, td:first-child { text-align: left; }
td.text, th.text { text-align: left; }
td.url { max-width: 480px; overflow: hidden; text-overflow: ellipsis; text-align: left; }
td.reason { white-space: normal; text-align: left; color: var(--muted); min-width: 160px; }
.empty { color: var(--muted); font-style: italic; }
.badge { display: inline-block; min-width: 56px; text-align: center; border-radius: 4px; padding: 0 6px;
  font-size: 12px; font-weight: 650; color: #fff; background: var(--muted); }
.badge.hit { background: var(--hit); } .badge.stale { background: var(--stale); }
.badge.miss { background: var(--miss); } .badge.bypass { background: var(--bypass); }
.badge.up { background: var(--hit); } .badge.down { background: var(--bad); }
.badge.embedded { background: var(--miss); }
ul.servers { list-style: none; margin: 0; padding: 0; }
ul.servers li { display: flex; gap: 8px; align-items: baseline; padding: 4px 0; border-bottom: 1px solid var(--line);
  flex-wrap: wrap; }
ul.servers .address { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
ul.servers .error { color: var(--bad); flex-basis: 100%; font-size: 12px; }
svg.chart { display: block; max-width: 100%; }
svg.chart .grid { stroke: var(--line); stroke-width: 1; }
svg.chart .axis { fill: var(--muted); font-size: 11px; }
svg.chart .bar { fill: var(--bars); }
svg.chart .ratio { fill: none; stroke: var(--chart); stroke-width: 2.2; stroke-linejoin: round; stroke-linecap: round; }
svg.chart .dot { fill: var(--chart); }
.scroll { overflow-x: auto; }
"""

SCRIPT = r"""
"use strict";
(function () {
  var root = document.getElementById("dashboard");
  var jsonUrl = root.getAttribute("data-json-url");
  var POLL_MS = 2000, TIMEOUT_MS = 5000, MAX_RECENT = 50;
  var SERVED = ["hits", "stale"];
  var ASKED = ["hits", "stale", "misses", "passes", "bypasses"];
  var TOTALS = [["hits", "hits"], ["stale", "stale"], ["misses", "misses"], ["bypasses", "bypasses"],
    ["passes", "passes"], ["stores", "stores"], ["store_failures", "store failures", true],
    ["uncacheable", "uncacheable"], ["app_errors", "app errors", true], ["waits", "waits"],
    ["wait_timeouts", "wait timeouts", true], ["refreshes", "refreshes"], ["purges", "purges"],
    ["memcached_errors", "memcached errors", true], ["local_hits", "local hits"]];
  var RULE_COLUMNS = [["hits", "hits"], ["stale", "stale"], ["misses", "misses"], ["bypasses", "bypasses"],
    ["passes", "passes"], ["stores", "stores"], ["app_errors", "app errors"]];
  var OUTCOME_CLASS = {HIT: "hit", STALE: "stale", MISS: "miss", BYPASS: "bypass"};
  var STATE_CLASS = {up: "up", down: "down", embedded: "embedded"};
  var lastData = null, lastTime = null;

  function $(id) { return document.getElementById(id); }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function obj(v) { return v !== null && typeof v === "object" && !Array.isArray(v) ? v : {}; }
  function list(v) { return Array.isArray(v) ? v : []; }
  function str(v) { return v === null || v === undefined ? "" : String(v); }
  function el(tag, cls, content) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (content !== undefined && content !== null) node.textContent = String(content);
    return node;
  }
  function svg(tag, attrs, content) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var name in attrs) node.setAttribute(name, String(attrs[name]));
    if (content !== undefined) node.textContent = String(content);
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function total(o, names) {
    var sum = 0;
    for (var i = 0; i < names.length; i++) { var v = num(o[names[i]]); if (v !== null) sum += v; }
    return sum;
  }
  function ratioOf(o) { var asked = total(o, ASKED); return asked > 0 ? total(o, SERVED) / asked : null; }
  function percent(r) { return r === null ? "\u2013" : (r * 100).toFixed(r < 0.995 && r > 0 ? 1 : 0) + "%"; }
  function count(v) { v = num(v); return v === null ? "\u2013" : Math.round(v).toLocaleString("en-US"); }
  function clock(seconds) {
    var d = new Date(seconds * 1000);
    return isNaN(d.getTime()) ? "\u2013" : d.toLocaleTimeString();
  }
  function duration(s) {
    s = num(s);
    if (s === null || s < 0) return "\u2013";
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.floor(s)) + " s";
    var m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
    if (d > 0) return d + " d " + (h % 24) + " h";
    if (h > 0) return h + " h " + (m % 60) + " min";
    return m + " min " + Math.floor(s % 60) + " s";
  }
  function millis(seconds) {
    seconds = num(seconds);
    if (seconds === null) return "\u2013";
    var ms = seconds * 1000;
    return (ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : Math.round(ms).toLocaleString("en-US")) + " ms";
  }

  function showHeader(data) {
    var parts = [];
    if (num(data.uptime) !== null) parts.push("up " + duration(data.uptime));
    var processes = num(data.processes);
    if (processes !== null) parts.push(processes === 1 ? "1 process" : count(processes) + " processes, added up");
    if (num(data.pid) !== null) parts.push("answered by pid " + Math.round(data.pid));
    $("meta").textContent = parts.join(" \u00b7 ");
  }

  function showRatio(data) {
    var r = ratioOf(data);
    $("ratio").textContent = percent(r);
    var asked = total(data, ASKED);
    $("ratio-caption").textContent = asked > 0
      ? count(total(data, SERVED)) + " of " + count(asked)
        + " requests the rules matched were served from the cache (hits + stale)"
      : "no request matched a rule yet";
    var points = intervals(data.history), latest = points.length ? points[points.length - 1] : null, line = "";
    if (latest) {
      line = "last interval: " + (latest.ratio === null ? "no requests" : percent(latest.ratio) + " of "
        + count(latest.asked) + (latest.asked === 1 ? " request" : " requests"));
      if (latest.seconds) line += " (" + (latest.asked / latest.seconds).toFixed(1) + " per second)";
    }
    $("ratio-latest").textContent = line;
  }

  function intervals(history) {
    var points = [], samples = list(history).map(obj);
    for (var i = 1; i < samples.length; i++) {
      var a = samples[i - 1], b = samples[i];
      var asked = total(b, ASKED) - total(a, ASKED), served = total(b, SERVED) - total(a, SERVED);
      var t = num(b.time), t0 = num(a.time);
      var ok = asked > 0 && served >= 0 && served <= asked;
      points.push({time: t, seconds: t !== null && t0 !== null && t > t0 ? t - t0 : null,
        asked: asked > 0 ? asked : 0, ratio: ok ? served / asked : null});
    }
    return points;
  }

  function showChart(data) {
    var box = clear($("chart")), points = intervals(data.history);
    var defined = points.filter(function (p) { return p.ratio !== null; });
    var W = Math.max(320, Math.round(box.clientWidth || 600)), H = 170, L = 38, R = 8, T = 8, B = 22;
    var w = W - L - R, h = H - T - B;
    var chart = svg("svg", {"class": "chart", viewBox: "0 0 " + W + " " + H, width: W, height: H,
      role: "img", "data-points": defined.length});
    chart.appendChild(svg("title", {}, defined.length
      ? "hit ratio per interval; latest " + percent(defined[defined.length - 1].ratio)
      : "no hit ratio history yet"));
    [0, 0.5, 1].forEach(function (g) {
      var y = T + h - g * h;
      chart.appendChild(svg("line", {"class": "grid", x1: L, x2: W - R, y1: y, y2: y}));
      chart.appendChild(svg("text", {"class": "axis", x: L - 6, y: y + 4, "text-anchor": "end"}, (g * 100) + "%"));
    });
    box.appendChild(chart);
    if (!points.length) {
      chart.appendChild(svg("text", {"class": "axis", x: L + w / 2, y: T + h / 2, "text-anchor": "middle"},
        "no history yet (a sample every 10 s)"));
      return;
    }
    var n = points.length, step = w / n, most = 0;
    points.forEach(function (p) { most = Math.max(most, p.asked); });
    var d = "", pen = false, last = null;
    points.forEach(function (p, i) {
      var x = L + step * (i + 0.5);
      if (most > 0 && p.asked > 0) {
        var bh = Math.max(1, (p.asked / most) * h * 0.9);
        chart.appendChild(svg("rect", {"class": "bar", x: (x - step * 0.4).toFixed(1), width: (step * 0.8).toFixed(1),
          y: (T + h - bh).toFixed(1), height: bh.toFixed(1)}));
      }
      if (p.ratio === null) { pen = false; return; }
      var y = T + h - p.ratio * h;
      d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1) + " ";
      pen = true;
      last = [x, y];
    });
    if (d) chart.appendChild(svg("path", {"class": "ratio", d: d.trim()}));
    if (last) chart.appendChild(svg("circle", {"class": "dot", cx: last[0].toFixed(1), cy: last[1].toFixed(1), r: 3}));
    var first = points[0].time, end = points[n - 1].time;
    if (first !== null && end !== null) {
      chart.appendChild(svg("text", {"class": "axis", x: L, y: H - 6}, clock(first)));
      chart.appendChild(svg("text", {"class": "axis", x: W - R, y: H - 6, "text-anchor": "end"}, clock(end)));
    }
    $("chart-caption").textContent = "hit ratio of each interval (line) and requests per interval (bars), "
      + n + (n === 1 ? " interval" : " intervals");
  }

  function showTotals(data) {
    var box = clear($("totals"));
    TOTALS.forEach(function (c) {
      var v = num(data[c[0]]);
      var tile = el("div", "tile" + (c[2] && v ? " warn" : ""));
      tile.setAttribute("data-counter", c[0]);
      tile.appendChild(el("div", "n", count(v)));
      tile.appendChild(el("div", "k", c[1]));
      box.appendChild(tile);
    });
  }

  function showRules(data) {
    var body = clear($("rules-body")), rules = obj(data.rules);
    var apps = obj(obj(data.histograms).app_seconds);
    var names = Object.keys(rules).sort(function (a, b) {
      return total(obj(rules[b]), ASKED) - total(obj(rules[a]), ASKED) || (a < b ? -1 : a > b ? 1 : 0);
    });
    if (!names.length) {
      var row = el("tr"), cell = el("td", "empty", "no per-rule counters in this snapshot");
      cell.colSpan = RULE_COLUMNS.length + 3;
      row.appendChild(cell);
      body.appendChild(row);
      return;
    }
    names.forEach(function (name) {
      var counters = obj(rules[name]), row = el("tr");
      row.setAttribute("data-rule", name);
      row.appendChild(el("td", "text", name));
      RULE_COLUMNS.forEach(function (c) { row.appendChild(el("td", null, count(counters[c[0]]))); });
      row.appendChild(el("td", null, percent(ratioOf(counters))));
      var app = obj(apps[name]), n = num(app.count), s = num(app.sum);
      row.appendChild(el("td", null, n && s !== null ? millis(s / n) : "\u2013"));
      body.appendChild(row);
    });
  }

  function showServers(data) {
    var box = clear($("servers")), servers = list(data.servers);
    if (!servers.length) {
      var only = el("li");
      only.appendChild(el("span", "badge embedded", "embedded"));
      only.appendChild(el("span", null, "embedded cache (in each process)"));
      box.appendChild(only);
      return;
    }
    servers.forEach(function (s) {
      s = obj(s);
      var state = str(s.state), li = el("li");
      li.appendChild(el("span", "badge " + (STATE_CLASS[state] || ""), state || "unknown"));
      li.appendChild(el("span", "address", str(s.address) || "(no address)"));
      if (s.error !== null && s.error !== undefined && str(s.error)) li.appendChild(el("span", "error", str(s.error)));
      box.appendChild(li);
    });
  }

  function showRecent(data) {
    var body = clear($("recent-body")), recent = list(data.recent).slice(0, MAX_RECENT);
    if (!recent.length) {
      var row = el("tr"), cell = el("td", "empty", "no decisions in this snapshot");
      cell.colSpan = 6;
      row.appendChild(cell);
      body.appendChild(row);
      return;
    }
    recent.forEach(function (r) {
      r = obj(r);
      var row = el("tr"), outcome = str(r.outcome), url = el("td", "url", str(r.url));
      url.title = str(r.url);
      row.appendChild(el("td", "text", num(r.time) === null ? "\u2013" : clock(r.time)));
      row.appendChild(el("td", "text", str(r.method)));
      row.appendChild(url);
      var badge = el("td", "text");
      badge.appendChild(el("span", "badge " + (OUTCOME_CLASS[outcome] || ""), outcome || "\u2013"));
      row.appendChild(badge);
      row.appendChild(el("td", "reason", str(r.reason)));
      var ms = num(r.ms);
      row.appendChild(el("td", null, ms === null ? "\u2013" : ms.toFixed(ms < 10 ? 1 : 0)));
      body.appendChild(row);
    });
  }

  function show(data) {
    showHeader(data);
    showRatio(data);
    showChart(data);
    showTotals(data);
    showRules(data);
    showServers(data);
    showRecent(data);
  }

  function fail(message) {
    var banner = $("error");
    banner.textContent = "Update failed at " + new Date().toLocaleTimeString() + ": " + message + ". "
      + (lastTime ? "Showing the data of " + lastTime.toLocaleTimeString() + "." : "No data yet.");
    banner.hidden = false;
  }

  function poll() {
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    var timer = controller ? setTimeout(function () { controller.abort(); }, TIMEOUT_MS) : null;
    var options = {headers: {Accept: "application/json"}, cache: "no-store", credentials: "same-origin"};
    if (controller) options.signal = controller.signal;
    fetch(jsonUrl, options).then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status + (response.statusText ? " " + response.statusText : ""));
      }
      return response.json();
    }).then(function (data) {
      if (data === null || typeof data !== "object" || Array.isArray(data)) {
        throw new Error("the answer is not a stats object");
      }
      try {
        show(data);
      } catch (error) {
        if (lastData) show(lastData);
        console.error(error);
        throw new Error("could not show the answer (" + error.message + ")");
      }
      lastData = data;
      lastTime = new Date();
      $("updated").textContent = lastTime.toLocaleTimeString();
      $("error").hidden = true;
    }).catch(function (error) {
      fail(error && error.name === "AbortError" ? "no answer within " + (TIMEOUT_MS / 1000) + " s"
        : str(error && error.message) || "unknown error");
    }).then(function () {
      if (timer) clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    });
  }

  window.addEventListener("resize", function () { if (lastData) showChart(lastData); });
  poll();
})();
"""

BODY = """
<header>
<h1>pagecache</h1>
<span class="meta" id="meta">loading\u2026</span>
<span class="meta">last updated <b id="updated">never</b></span>
</header>
<main id="dashboard" data-json-url="{json_url}">
<div id="error" role="alert" hidden></div>
<section id="ratio-card"><h2>Hit ratio since start</h2>
<div class="big" id="ratio">\u2013</div><div class="caption" id="ratio-caption"></div>
<div class="latest" id="ratio-latest"></div></section>
<section id="chart-card"><h2>Hit ratio, last minutes</h2><div id="chart"></div>
<div class="caption" id="chart-caption"></div></section>
<section id="servers-card"><h2>Cache servers</h2><ul class="servers" id="servers"></ul></section>
<section id="totals-card"><h2>Totals</h2><div class="tiles" id="totals"></div></section>
<section id="rules-card"><h2>Per rule</h2><div class="scroll"><table id="rules">
<thead><tr><th>rule</th><th>hits</th><th>stale</th><th>misses</th><th>bypasses</th><th>passes</th>
<th>stores</th><th>app errors</th><th>hit ratio</th><th>app time (mean)</th></tr></thead>
<tbody id="rules-body"></tbody></table></div></section>
<section id="recent-card"><h2>Last decisions (newest first)</h2><div class="scroll"><table id="recent">
<thead><tr><th>time</th><th class="text">method</th><th class="text">URL</th><th class="text">outcome</th>
<th class="text">reason</th><th>ms</th></tr></thead>
<tbody id="recent-body"></tbody></table></div></section>
</main>
<noscript><p>This dashboard needs JavaScript; the counters are also JSON at the same URL
(ask with <code>Accept: application/json</code>).</p></noscript>
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


#: The page's policy: its own inline style and script only, fetches to its own origin only.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; script-src {_hash(SCRIPT)}; style-src {_hash(STYLE)}; "
                           "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'")

#: The response headers for :func:`page`'s answer (besides ``Content-Length``).
HEADERS: List[Tuple[str, str]] = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY + "; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Vary", "Accept"),
]


def page(json_url: str) -> bytes:
    """The dashboard's HTML document, reading the stats snapshot (JSON) at
    ``json_url`` (a URL of the same origin, usually ``stats_path`` itself:
    the page asks for it with ``Accept: application/json``)."""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{html.escape(CONTENT_SECURITY_POLICY)}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"referrer\" content=\"no-referrer\">\n"
            "<title>pagecache dashboard</title>\n"
            f"<style>{STYLE}</style>\n</head><body>"
            + BODY.replace("{json_url}", html.escape(json_url, quote=True))
            + f"<script>{SCRIPT}</script>\n</body></html>\n").encode("utf-8")
