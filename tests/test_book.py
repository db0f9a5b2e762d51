"""The book end to end: notebooks executed on the quick ``tiny`` preset, the book built with warnings as errors,
then every page opened in headless Debian Chromium.

The browser test fails on a page that does not render, a broken or missing figure, raw TeX left in the text, a
broken internal link, or any request that leaves this machine (math and assets must work offline). It skips only
when Chromium is not installed, and never under CI (``CI=true``), where ``.ci/run`` installs it.
Set ``SEARLE_BOOK_HTML=_build/html`` to check an already built book (e.g. the embedded one) instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from _book_fixtures import (REPO, check_page, chromium, chromium_missing, html_pages, link_problem,
                            network_requests, notebook_images, runner, serve, book_builder)

TINY_RESULTS = "_build/tiny/results"  # tiny runs write here, not into the committed results/


@pytest.fixture(scope="session")
def book_html() -> Path:
    """The HTML folder of a built book: SEARLE_BOOK_HTML, or the tiny book built here."""
    given = os.environ.get("SEARLE_BOOK_HTML")
    if given:
        html = (REPO / given).resolve()
        assert (html / "index.html").is_file(), f"SEARLE_BOOK_HTML={given}: no index.html there"
        return html
    rn = runner()
    rn.run(("tiny",), params={"out_dir": TINY_RESULTS})
    return book_builder().build("tiny", extra_existing=False).parent


@pytest.mark.notebooks
@pytest.mark.slow
def test_tiny_book_has_a_page_per_notebook(book_html: Path) -> None:
    rn = runner()
    if os.environ.get("SEARLE_BOOK_HTML"):
        pytest.skip("checking a given book; the per-notebook check is for the tiny build")
    for nb in rn.NOTEBOOKS:
        if "tiny" in nb.presets:
            page = book_html / "book" / "runs" / f"{nb.slug}__tiny.html"
            assert page.is_file(), f"notebook {nb.slug} has no page in the tiny book ({page})"
    for part, (_, frame) in rn.PARTS.items():
        assert (book_html / f"{frame}.html").is_file(), f"part {part}: frame page {frame}.html missing"


@pytest.mark.browser
@pytest.mark.notebooks
@pytest.mark.slow
def test_pages_render_in_chromium(book_html: Path, tmp_path: Path) -> None:
    why = chromium_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but {why}")
        pytest.skip(why)
    pages = html_pages(book_html)
    assert len(pages) >= 5, f"only {len(pages)} pages in {book_html}"
    problems, links, requests = [], set(), []
    with serve(book_html) as base, chromium(tmp_path / "profile") as driver:
        for page in pages:
            found, internal, facts = check_page(driver, base, book_html, page)
            problems += found
            links.update(internal)
            rel = page.relative_to(book_html)
            source = REPO / rel.with_suffix(".ipynb")
            if rel.parts[:2] == ("book", "runs") and source.is_file():
                want = notebook_images(source)
                if facts["images_in_main"] < want:
                    problems.append(f"{rel}: {want} figures in the notebook, {facts['images_in_main']} on the page")
            requests += network_requests(driver)
        # chrome:// requests are the browser's own new-tab page, not the book's
        outside = sorted({u for u in requests if u.startswith(("http:", "https:", "ws:", "wss:", "ftp:"))
                          and not u.startswith(base)})
    problems += [f"broken internal link {link}: {why}" for link in sorted(links)
                 if (why := link_problem(link, base, book_html))]
    problems += [f"request leaves the machine: {u}" for u in outside]
    assert not problems, "\n".join(problems)
