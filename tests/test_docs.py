"""The README's configuration reference lists every option with its real default."""

import os
import re

from pagecache.config import OPTIONS

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def reference_rows():
    text = open(README, encoding="utf-8").read()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return {match.group(1): match.group(2).strip()
            for match in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|", section, re.M)}


def test_every_option_is_documented_and_nothing_else():
    assert set(reference_rows()) == set(OPTIONS) | {"cached_urls"}


def test_documented_defaults_are_the_real_ones():
    for name, shown in reference_rows().items():
        if name == "cached_urls":
            continue
        option = OPTIONS[name]
        written = "" if shown == "(none)" else shown.strip("`")
        assert option.convert(written) == option.default, name
