"""The documentation site: it builds with warnings as errors, every internal link of the built
pages resolves, every notebook of ``notebooks/`` is a page, and the link checker can fail.

The build runs ``mkdocs build --strict`` with this interpreter (the environment that has the
docs extra), into a temporary folder; nothing is written into the repository (mkdocs-jupyter's
cache is off and the notebooks are rendered in place, never executed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        str(ROOT / "mkdocs.yml"),
        "--site-dir",
        str(out),
    ]
    proc = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


# --------------------------------------------------------------------------- link checker
class _Page(HTMLParser):
    """Collects the ids (anchor targets) and the links (href/src) of one HTML page."""

    LINK_ATTRS: ClassVar[dict[str, str]] = {
        "a": "href",
        "link": "href",
        "area": "href",
        "img": "src",
        "script": "src",
        "iframe": "src",
        "source": "src",
        "video": "src",
        "audio": "src",
        "embed": "src",
    }

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        value = attrs.get(self.LINK_ATTRS.get(tag, ""))
        if value is not None:
            self.links.append(value)


def _text(html: str) -> str:
    """The visible text of an HTML page, whitespace collapsed."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.DOTALL)
    return " ".join(unescape(re.sub(r"<[^>]+>", "", html)).split())


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def broken_links(site: Path) -> list[str]:
    """Every link of every HTML page under ``site`` that does not resolve, as 'page: link (why)'.

    Relative and site-absolute links must name a file of the site (a folder means its
    index.html) and, with a ``#fragment`` into an HTML page, an element with that id. External
    links (http, https, mailto) are only checked for syntax, since the tests run offline.
    """
    site = site.resolve()
    pages = {p: _parse(p) for p in sorted(site.rglob("*.html"))}
    problems = []
    for page, parsed in pages.items():
        where = page.relative_to(site).as_posix()
        for link in parsed.links:
            parts = urlsplit(link.strip())
            if parts.scheme in ("http", "https"):
                if not parts.netloc or " " in link.strip():
                    problems.append(f"{where}: {link} (malformed external link)")
                continue
            if parts.scheme == "mailto":
                if "@" not in parts.path:
                    problems.append(f"{where}: {link} (malformed mailto link)")
                continue
            if parts.scheme in ("data", "javascript"):
                continue
            if parts.scheme or parts.netloc:
                problems.append(f"{where}: {link} (unexpected scheme or host in an internal link)")
                continue
            path = unquote(parts.path)
            if not path:
                target = page
            elif path.startswith("/"):
                target = (site / path.lstrip("/")).resolve()
            else:
                target = (page.parent / path).resolve()
            if target != site and site not in target.parents:
                problems.append(f"{where}: {link} (points outside the site)")
                continue
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{where}: {link} (no such file in the site)")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if fragment not in ids:
                    problems.append(f"{where}: {link} (no element with id {fragment!r} in {target.relative_to(site)})")
    return problems


# --------------------------------------------------------------------------- the built site
def test_internal_links_resolve(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20, f"only {len(pages)} pages built"
    problems = broken_links(site)
    assert not problems, "broken links in the built docs:\n" + "\n".join(problems[:50])


def test_link_checker_catches_planted_broken_links(site, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    page = copy / "getting-started" / "index.html"
    html = page.read_text(encoding="utf-8")
    planted = [
        '<a href="../api/no-such-page/">x</a>',
        '<a href="../api/model/#no-such-anchor">x</a>',
        '<img src="../assets/missing.png">',
        '<a href="#also-missing">x</a>',
        '<a href="https:///nohost">x</a>',
        '<a href="../../../outside.html">x</a>',
    ]
    page.write_text(html.replace("</article>", "".join(planted) + "</article>", 1), encoding="utf-8")
    problems = broken_links(copy)
    assert len(problems) == len(planted), "\n".join(problems)
    for snippet, problem in zip(
        ["no-such-page", "no-such-anchor", "missing.png", "also-missing", "nohost", "outside"], problems
    ):
        assert problem.startswith("getting-started/index.html: ") and snippet in problem, problem


def test_every_notebook_is_a_page(site):
    assert NOTEBOOKS, "no notebooks in notebooks/"
    home = (site / "index.html").read_text(encoding="utf-8")
    for notebook in NOTEBOOKS:
        page = site / "notebooks" / notebook.stem / "index.html"
        assert page.is_file(), f"{notebook.name} is not rendered at {page.relative_to(site)}"
        html = page.read_text(encoding="utf-8")
        text = _text(html)
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        # its title (first Markdown line) and the first line of every code cell are on the page
        title = next("".join(c["source"]).splitlines()[0] for c in cells if c["cell_type"] == "markdown")
        title = " ".join(title.lstrip("#").replace("`", "").replace("*", "").split())
        assert title in text, f"{notebook.name}: title {title!r} missing from its page"
        for cell in cells:
            lines = [line for line in "".join(cell["source"]).splitlines() if line.strip()]
            if cell["cell_type"] == "code" and lines:
                assert " ".join(lines[0].split()) in text, f"{notebook.name}: code line {lines[0]!r} not rendered"
        assert f'href="notebooks/{notebook.stem}/"' in home, f"{notebook.name} is not in the navigation"
        assert (page.parent / notebook.name).is_file(), f"{notebook.name}: no download copy next to its page"
        assert f'href="{notebook.name}" download' in html, f"{notebook.name}: no download link on its page"
    rendered = {p.parent.name for p in (site / "notebooks").glob("*/index.html")}
    assert rendered == {p.stem for p in NOTEBOOKS}, "pages for notebooks that are not in notebooks/"


def test_api_reference_is_generated_from_docstrings(site):
    import geognn
    from geognn.calculator import GeoGNNCalculator
    from geognn.datasets import open_dataset

    checks = {
        "api/graph/index.html": ["geognn.graph.build.build_graph", geognn.build_graph.__doc__],
        "api/model/index.html": ["geognn.model.build_model", "geognn.model.load_model"],
        "api/calculator/index.html": ["GeoGNNCalculator", GeoGNNCalculator.__doc__],
        "api/datasets/index.html": ["geognn.datasets.open_dataset", open_dataset.__doc__],
    }
    # every registered backbone has its docstring on the Backbones page (a new backbone needs a
    # line ``::: geognn.backbones.<file>.<Class>`` in docs/api/backbones.md)
    from geognn.backbones import BACKBONES

    html = (site / "api/backbones/index.html").read_text(encoding="utf-8")
    for name, cls in BACKBONES.items():
        full = f"{cls.__module__}.{cls.__name__}"
        assert f'id="{full}"' in html, f"backbone {name!r} ({full}) is not in docs/api/backbones.md"
    for rel, needles in checks.items():
        html = (site / rel).read_text(encoding="utf-8")
        for needle in needles:
            first_words = " ".join(needle.split()[:4])  # a docstring's first words, or a full name
            assert first_words in html, f"{rel}: {first_words!r} not rendered"
        assert ":class:" not in html and ":func:" not in html, f"{rel}: Sphinx role left in the HTML"


def test_command_line_page_has_every_command_and_option(site):
    import argparse

    from geognn.cli import build_parser

    text = _text((site / "reference/cli/index.html").read_text(encoding="utf-8"))
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(commands) >= 3
    for name, command in commands.items():
        assert f"usage: geognn {name}" in text, f"geognn {name} missing from the command-line page"
        for action in command._actions:
            for option in action.option_strings:
                assert option in text, f"geognn {name} {option} missing from the command-line page"


def test_readme_sections_and_result_files_are_included(site):
    hooks = _hooks()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = {
        "getting-started": "Set up on a fresh machine",
        "benchmarks": "Benchmarks",
        "reference/backbones": "Backbones",
        "reference/training": "Train on your data",
        "reference/expressivity": "How expressive is each backbone?",
    }
    for page, heading in pages.items():
        html = (site / page / "index.html").read_text(encoding="utf-8")
        assert "readme:" not in html and "readme-body:" not in html, f"{page}: README include left unexpanded"
        # the first and the last line of prose of that README section are on the page
        prose = [
            line
            for line in hooks.readme_section(readme, heading, body_only=True).splitlines()
            if line[:1].isalpha() and "`" not in line and "*" not in line and "[" not in line
        ]
        text = _text(html)
        for line in (prose[0], prose[-1]):
            assert " ".join(line.split()) in text, f"{page}: README line {line!r} missing"
    html = (site / "benchmarks" / "results" / "index.html").read_text(encoding="utf-8")
    assert "--8&lt;--" not in html and "--8<--" not in html
    for name in ("accuracy_qm9.md", "expressivity_report_float64.md"):
        row = next(
            line
            for line in (ROOT / "benchmarks/results" / name).read_text(encoding="utf-8").splitlines()
            if line.startswith("| ")
            and "---" not in line
            and not line.startswith("| pair")
            and not line.startswith("| backbone")
        )
        cells = [c.strip() for c in row.strip("|").split("|")]
        pattern = r"<tr>\s*" + r"\s*".join(rf"<td[^>]*>{re.escape(unescape(c))}</td>" for c in cells[:3])
        assert re.search(pattern, unescape(html)), f"{name}: row {row!r} not included as a table row"


# --------------------------------------------------------------------------- the hook, unit-tested
def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_section_extraction():
    hooks = _hooks()
    readme = "\n".join(
        [
            "# T",
            "intro",
            "## A",
            "a text",
            "```bash",
            "# not a heading",
            "```",
            "### A.1",
            "deep",
            "## B",
            "b text",
            "### C",
            "c text",
            "## D",
        ]
    )
    assert hooks.readme_section(readme, "A").splitlines() == [
        "## A",
        "a text",
        "```bash",
        "# not a heading",
        "```",
        "### A.1",
        "deep",
    ]
    assert hooks.readme_section(readme, "C").splitlines() == ["## C", "c text"]  # ends at the next ## heading
    assert hooks.readme_section(readme, "A", body_only=True).splitlines() == [
        "a text",
        "```bash",
        "# not a heading",
        "```",
        "## A.1",
        "deep",
    ]
    with pytest.raises(Exception, match="no section headed 'Z'"):
        hooks.readme_section(readme, "Z")
    assert (
        hooks.on_page_content("by :class:<code>X</code> and :func:<code>f</code>", None, None, None)
        == "by <code>X</code> and <code>f</code>"
    )


def test_notebook_toc_points_at_page_headings():
    from mkdocs.structure.toc import get_toc

    hooks = _hooks()
    toc = get_toc(
        [
            {
                "level": 1,
                "id": "title",
                "name": "Title",
                "children": [
                    {
                        "level": 2,
                        "id": "relax-with",
                        "name": "Relax with",
                        "children": [],
                    },  # mkdocs-jupyter's id, code dropped
                    {"level": 2, "id": "b", "name": "B", "children": []},
                ],
            }
        ]
    )
    html = (
        '<h1 id="title">Title<a class="anchor-link" href="#title">¶</a></h1>'
        '<div class="output_html"><h2 id="an-output-heading">Output</h2></div>'
        '<h2 id="relax-with-geognncalculator">Relax with <code>GeoGNNCalculator</code>'
        '<a class="anchor-link" href="#relax-with-geognncalculator">¶</a></h2><h2 id="b">B</h2>'
    )
    hooks.fix_notebook_toc(html, toc)
    entries = [(item.id, item.title) for item in toc.items[0].children]
    assert entries == [("relax-with-geognncalculator", "Relax with GeoGNNCalculator"), ("b", "B")]
    assert toc.items[0].id == "title"


def test_readme_links_are_rewritten_for_the_docs_page():
    hooks = _hooks()
    text = (
        "![curves](docs/images/learning_curves.png) and [data](data/README.md), "
        "[vesin](https://github.com/Luthaf/vesin), [up](#benchmarks), "
        '<img src="docs/images/parity.png" width="400"> [img](docs/images/a.png "title")'
    )
    out = hooks.relink(text, "reference/training.md")
    assert out == (
        "![curves](../images/learning_curves.png) and data (`data/README.md`), "
        "[vesin](https://github.com/Luthaf/vesin), [up](#benchmarks), "
        '<img src="../images/parity.png" width="400"> [img](../images/a.png "title")'
    )
    assert hooks.relink("![x](docs/images/x.png)", "getting-started.md") == "![x](images/x.png)"
