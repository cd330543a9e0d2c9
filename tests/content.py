"""Realistic page content for the compression tests and benchmark: article
lists and JSON answers of varied words (Zipf-like, from fixed seeds), which
compress as real pages do rather than as repeated bytes."""

from __future__ import annotations

import json
import random
from typing import List

WORDS = """the of and to in a is that for it as was with be by on not he this are or his from at
which but have an they you were her she there one all we their can has been if more when will would
who so no out up into do any time about new other people some could them only also than its over city
after most first two year work school market report water policy system council river music season
energy health research company county village government minister station museum garden harbour
railway bridge festival library election budget climate coast island mountain valley forest winter
summer spring autumn morning evening weekend holiday ticket player coach match league final record
history science student teacher hospital doctor nurse patient service network traffic airport flight
train driver street avenue square bakery kitchen recipe dinner lunch coffee bread cheese wine shop
price cost profit loss share board member chair vote plan project design build open close launch
announce review publish release update change reform protest strike agreement contract partner family
children parents friends neighbours volunteers visitors residents local national regional global
public private small large early late major minor quiet busy historic modern""".split()
WEIGHTS = [1.0 / (rank + 1) ** 0.9 for rank in range(len(WORDS))]  # Zipf-like, as words in text are
AUTHORS = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra", "Barbara Liskov",
           "Donald Knuth", "Ken Thompson", "Margaret Hamilton", "Radia Perlman", "Niklaus Wirth"]
SECTIONS = ["news", "sport", "culture", "business", "science", "travel", "food", "opinion"]
HEAD = ('<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<title>Latest articles - The Daily Example</title>\n'
        '<link rel="stylesheet" href="/static/site.css">\n</head>\n<body>\n<nav class="top">'
        + "".join(f'<a href="/{s}">{s.title()}</a>' for s in SECTIONS) + '</nav>\n<main class="list">\n').encode()
TAIL = b'</main>\n<footer><p>The Daily Example - <a href="/about">About</a></p></footer>\n</body>\n</html>\n'


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, WEIGHTS, k=rng.randint(low, high))).capitalize()


def article(rng: random.Random, number: int) -> bytes:
    """One article card of a list page."""
    title = sentence(rng, 5, 10)
    section, author = rng.choice(SECTIONS), rng.choice(AUTHORS)
    day = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    summary = ". ".join(sentence(rng, 8, 20) for _ in range(rng.randint(2, 4))) + "."
    tags = "".join(f'<li><a href="/tags/{tag}">{tag}</a></li>'
                   for tag in sorted(set(rng.choices(WORDS, WEIGHTS, k=rng.randint(2, 5)))))
    slug = "-".join(title.lower().split()[:6])
    return (f'<article class="card card--{section}" id="a{number}">\n'
            f'  <header><h2 class="card__title"><a href="/{section}/{number}/{slug}">{title}</a></h2>\n'
            f'  <p class="card__meta">By <a href="/authors/{author.lower().replace(" ", "-")}">{author}</a> '
            f'&middot; <time datetime="{day}T{rng.randint(6, 22):02d}:{rng.randint(0, 59):02d}:00Z">{day}</time> '
            f'&middot; {rng.randint(2, 15)} min read</p></header>\n'
            f'  <img src="/media/{number}-{rng.randrange(16 ** 8):08x}.jpg" alt="" width="640" height="360">\n'
            f'  <p class="card__summary">{summary}</p>\n'
            f'  <ul class="tags">{tags}</ul>\n'
            f'</article>\n').encode()


def html_page(size: int, seed: int = 1) -> bytes:
    """An article list of at least ``size`` bytes."""
    rng = random.Random(seed)
    parts, total, number = [HEAD], len(HEAD) + len(TAIL), 1000
    while total < size:
        number += 1
        parts.append(article(rng, number))
        total += len(parts[-1])
    return b"".join(parts) + TAIL


def json_document(size: int, seed: int = 2) -> bytes:
    """An API answer listing articles, of at least ``size`` bytes."""
    rng = random.Random(seed)
    items: List[dict] = []
    length = 0
    while length < size:
        item = {"id": 5000 + len(items), "title": sentence(rng, 4, 9),
                "author": {"name": rng.choice(AUTHORS), "id": rng.randint(1, 400)},
                "published": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                             f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
                "section": rng.choice(SECTIONS),
                "tags": sorted(set(rng.choices(WORDS, WEIGHTS, k=rng.randint(1, 4)))),
                "score": round(rng.random() * 100, 2), "comments": rng.randint(0, 250),
                "summary": sentence(rng, 12, 30) + ".", "url": f"https://example.com/a/{5000 + len(items)}"}
        items.append(item)
        length += len(json.dumps(item)) + 2
    return json.dumps({"count": len(items), "next": "/api/articles?page=2", "items": items}).encode()
