"""Rendering of attributions: signed colours, terminal text, JSON, self-contained HTML."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import torch
from rich.console import Console

from jetex.attribution import Attribution
from jetex.viz.attribution import colour_scale, render_terminal, score_colour, to_html, to_json, to_rich_text


def make(scores, bos=True):
    toks = ("<s>", "The", " cat", " <b>&", "\n")[: len(scores)]
    return Attribution(toks, torch.arange(len(scores)), torch.tensor(scores, dtype=torch.float64), 3, " sat", "normxlogit", {"layer": 2}, bos)


def test_signed_colours_scale_with_magnitude():
    assert score_colour(0.0, 1.0) == (255, 255, 255)
    r, g, b = score_colour(1.0, 1.0)
    assert r > b and r > g  # positive: red
    r, g, b = score_colour(-1.0, 1.0)
    assert b > r  # negative: blue
    weak, strong = score_colour(0.2, 1.0), score_colour(0.8, 1.0)
    assert strong[1] < weak[1] < 255  # more intense = further from white
    assert score_colour(5.0, 1.0) == score_colour(1.0, 1.0)  # clipped (e.g. BOS above the scale)


def test_scale_ignores_bos():
    a = make([100.0, 1.0, -2.0, 0.5, 0.0])
    assert colour_scale(a) == 2.0
    assert colour_scale(make([100.0, 1.0, -2.0, 0.5, 0.0], bos=False)) == 100.0


def test_terminal_rendering():
    a = make([3.0, 1.0, -2.0, 0.5, 0.0])
    console = Console(record=True, width=100, color_system="truecolor")
    render_terminal(a, console)
    text = console.export_text()
    assert "normxlogit (layer=2)" in text and "' sat'" in text and "⏎" in text
    assert text.index("' cat'") > text.index("rank")  # BOS is not ranked: the table starts with ' cat'
    styles = [str(span.style) for span in to_rich_text(a).spans]
    assert len(styles) == 5 and all(" on rgb(" in s for s in styles)
    assert "rgb(255,255,255)" in styles[4]  # zero score: white


def test_json_round_trip():
    a = make([3.0, 1.0, -2.0, 0.5, 0.0])
    d = json.loads(to_json(a))
    assert d["tokens"] == list(a.tokens) and d["scores"] == [3.0, 1.0, -2.0, 0.5, 0.0]
    assert d["target"] == " sat" and d["options"] == {"layer": 2} and d["bos"] is True


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.titles, self.tags, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        d = dict(attrs)
        if "title" in d:
            self.titles.append(d["title"])

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_and_escaped():
    a = make([3.0, 1.0, -2.0, 0.5, 0.0])
    page = to_html(a)
    p = _Collect()
    p.feed(page)
    assert "style" in p.tags and "script" not in p.tags and "link" not in p.tags and "img" not in p.tags
    assert "http" not in page  # no external resources
    assert " <b>&" not in page and "&lt;b&gt;&amp;" in page  # token text escaped
    # every token has a hover title with its score
    token_titles = [t for t in p.titles if t.startswith("#")]
    assert len(token_titles) == 5
    assert token_titles[2].endswith("-2") and "' cat'" in token_titles[2]
