"""Hostile data strings (group, class and file names) come out of every report as inert text."""

from __future__ import annotations

import re

import pytest
from bs4 import BeautifulSoup

from audit.report import write_report
from audit.report.markdown import md_escape
from tests.run_factory import make_run

XSS = "<script>alert(1)</script>"
LINK = "](javascript:alert(1))"
IMG = '<img src=x onerror="alert(1)">'
URL_ATTRS = {"href", "src", "action", "formaction", "xlink:href", "poster", "data", "srcset"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    run = make_run(root / "run", n=240, n_boot=30, n_perm=60, methods=("gae", "gradcam"),
                   class_names=[XSS, LINK, IMG, "cross"],
                   group_values={"background": [XSS, LINK, "water"], "colour": [IMG, "blue"]},
                   file_stem="x" + LINK.replace("/", "_"))
    paths = write_report([run.path], out_dir=root / "out", formats=("html", "md", "pdf", "json"), model_card=True)
    return {"run": run, "paths": paths}


def _assert_inert(soup: BeautifulSoup) -> None:
    assert soup.find("script") is None
    for tag in soup.find_all(True):
        for attr, value in tag.attrs.items():
            assert not attr.lower().startswith("on"), (tag.name, attr)
            if attr.lower() in URL_ATTRS:
                assert "javascript:" not in str(value).lower().replace(" ", ""), (tag.name, attr, value)
    for tag in soup.find_all("img"):
        assert tag["src"].startswith("data:image/png;base64,")


def test_html_escapes_everything(hostile: dict) -> None:
    html = hostile["paths"]["html"].read_text(encoding="utf-8")
    soup = BeautifulSoup(html, "html.parser")
    _assert_inert(soup)
    assert "<script>" not in html
    # the strings are shown literally, as text
    text = soup.get_text()
    assert XSS in text and LINK in text and IMG in text


def test_markdown_escapes_everything(hostile: dict) -> None:
    from markdown_it import MarkdownIt

    md = hostile["paths"]["md"].read_text(encoding="utf-8")
    assert "<script" not in md and "<img" not in md.replace("![", "")
    assert "](javascript:" not in md
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    soup = BeautifulSoup(rendered, "html.parser")
    _assert_inert_md(soup)
    text = soup.get_text()
    assert XSS in text and LINK in text


def _assert_inert_md(soup: BeautifulSoup) -> None:
    assert soup.find("script") is None
    for tag in soup.find_all(True):
        for attr, value in tag.attrs.items():
            assert not attr.lower().startswith("on")
            if attr.lower() in URL_ATTRS:
                assert "javascript:" not in str(value).lower()
    for a in soup.find_all("a"):
        raise AssertionError(f"unexpected link in the Markdown report: {a}")
    for img in soup.find_all("img"):
        assert img["src"].startswith("figures/")


def test_model_card_escapes_everything(hostile: dict) -> None:
    from markdown_it import MarkdownIt

    card = hostile["paths"]["model_card"].read_text(encoding="utf-8")
    assert "<script" not in card and "](javascript:" not in card
    soup = BeautifulSoup(MarkdownIt("commonmark").enable("table").render(card), "html.parser")
    assert soup.find("script") is None
    assert all("javascript:" not in (a.get("href") or "") for a in soup.find_all("a"))


def test_pdf_and_json_survive_markup_in_data(hostile: dict) -> None:
    from pypdf import PdfReader

    text = " ".join(p.extract_text() for p in PdfReader(hostile["paths"]["pdf"]).pages)
    assert "alert(1)" in re.sub(r"\s+", "", text)  # shown as text, not swallowed as markup
    assert XSS in hostile["paths"]["json"].read_text(encoding="utf-8").replace("\\u003c", "<")


@pytest.mark.parametrize("raw", [XSS, LINK, IMG, "a|b", "*x*_y_", "`code`", "# h", "![i](x)", "line\nbreak"])
def test_md_escape_round_trips_as_text(raw: str) -> None:
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").render(f"| h |\n|---|\n| {md_escape(raw)} |\n")
    soup = BeautifulSoup(MarkdownIt("commonmark").enable("table").render(f"| h |\n|---|\n| {md_escape(raw)} |\n"),
                         "html.parser")
    cell = soup.find("td")
    assert cell is not None, rendered
    assert cell.get_text() == raw.replace("\n", " ")
    assert not cell.find_all(True)  # no element inside the cell: plain text only
