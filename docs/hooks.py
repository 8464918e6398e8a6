"""MkDocs hook: render the tutorials of ``notebooks/`` (outside ``docs/``) as site pages.

Every ``notebooks/*.ipynb`` of the checkout becomes a page of the site, read in place from the
repository root (its source path in the docs is ``notebooks/<name>.ipynb``, its URL
``notebooks/<name>/``), and an entry of the nav's "Tutorials" section, so the site lists exactly
the notebooks that exist: no copies, no symlinks, nothing generated into the tree.
mkdocs-jupyter renders them with ``execute: false`` (they are committed with their outputs and
re-executed by ``tests/test_notebooks.py``). Markdown pages link to them as
``../notebooks/<name>.ipynb`` (from a page one folder deep); a link to a notebook that does not
exist is an unresolved link, which fails ``mkdocs build --strict``.

Also here: README sections included by heading and the command-line help generated from the
parser (``on_page_markdown``), Sphinx role names
stripped from rendered docstrings and notebook tables of contents pointed at the page's real
heading ids (``on_page_content``).
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from urllib.parse import urlsplit

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

NOTEBOOK_DIR = "notebooks"  # relative to the folder of mkdocs.yml; also their path inside the docs
NAV_SECTION = "Tutorials"
FIRST = "quickstart.ipynb"


def repo_root(config) -> Path:
    return Path(config.config_file_path).parent


def notebooks(config) -> list[str]:
    """Docs paths (``notebooks/<name>.ipynb``) of the notebooks to render: quickstart first."""
    paths = sorted((repo_root(config) / NOTEBOOK_DIR).glob("*.ipynb"), key=lambda p: (p.name != FIRST, p.name))
    return [f"{NOTEBOOK_DIR}/{p.name}" for p in paths]


def on_config(config):
    """Fill the nav's (empty) "Tutorials" section with one entry per notebook."""
    for item in config.nav or []:
        if isinstance(item, dict) and NAV_SECTION in item:
            listed = item[NAV_SECTION] or []
            item[NAV_SECTION] = listed + [path for path in notebooks(config) if path not in listed]
            break
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    """Add the notebooks as files of the docs, read in place (source folder: the repository root)."""
    for path in notebooks(config):
        files.append(
            File(
                path,
                src_dir=str(repo_root(config)),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


# --------------------------------------------------------------------------- README sections
#: A line ``<!-- readme: HEADING -->`` in a page is replaced by the README section with that
#: heading text (the heading line through the line before the next heading of the same or a
#: higher level), headings shifted so that the section's own heading is ``##``;
#: ``<!-- readme-body: HEADING -->`` leaves the heading out (the page's title stands for it) and
#: shifts its sub-headings to ``##``. The text and numbers stay in one place, the README; a
#: heading that is not there fails the build, naming it.
README_INCLUDE = re.compile(r"^<!-- readme(?P<body>-body)?: (?P<heading>.+?) -->\s*$", re.MULTILINE)
HEADING = re.compile(r"^(?P<hashes>#{1,6}) (?P<text>.+?)\s*$")


def readme_section(readme: str, heading: str, body_only: bool = False) -> str:
    """The section of ``readme`` headed ``heading``, with its heading moved to level 2 (or, with
    ``body_only``, without its heading line and with its sub-headings moved up to level 2)."""
    lines = readme.splitlines()
    fence = False
    start = level = None
    out = []
    for line in lines:
        if line.lstrip().startswith("```"):
            fence = not fence
        match = None if fence else HEADING.match(line)
        if start is None:
            if match and match["text"] == heading:
                start, level = True, len(match["hashes"])
                if not body_only:
                    out.append("## " + match["text"])
            continue
        if match and len(match["hashes"]) <= level:
            break
        if match:  # a sub-heading: keep its depth below the section's heading
            line = "#" * (len(match["hashes"]) - level + (1 if body_only else 2)) + " " + match["text"]
        out.append(line)
    if start is None:
        raise PluginError(f"README.md has no section headed {heading!r} (asked for by a docs page)")
    return "\n".join(out).strip("\n") + "\n"


MD_LINK = re.compile(r"(?P<label>!?\[[^\]]*\])\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
HTML_SRC = re.compile(r"(?P<attr>\b(?:src|href)=\")(?P<target>docs/[^\"]+)\"")


def relink(text: str, page_uri: str) -> str:
    """Rewrite the README's repository-relative links for a docs page at ``page_uri``.

    ``docs/...`` targets (images the README shows) become relative to the page; other relative
    targets (files of the repository outside the docs) cannot resolve in the site, so they become
    the link text followed by the path as code. Links with a scheme, ``#anchors`` and absolute
    paths are left alone.
    """
    here = posixpath.dirname(page_uri) or "."

    def inside_docs(target: str) -> str:
        path, _, fragment = target.partition("#")
        new = posixpath.relpath(path[len("docs/") :], here)
        return new + ("#" + fragment if fragment else "")

    def markdown_link(m):
        target = m["target"]
        if urlsplit(target).scheme or target.startswith(("#", "/")):
            return m[0]
        if target.startswith("docs/"):
            return f"{m['label']}({inside_docs(target)}{m['title'] or ''})"
        return f"{m['label'].lstrip('!')[1:-1]} (`{target}`)"

    text = MD_LINK.sub(markdown_link, text)
    return HTML_SRC.sub(lambda m: f'{m["attr"]}{inside_docs(m["target"])}"', text)


def on_page_markdown(markdown, page, config, files):
    """Replace ``<!-- cli-help -->`` by the command-line help, and ``<!-- readme: HEADING -->`` and
    ``<!-- readme-body: HEADING -->`` lines by that README section, its links rewritten for this
    page (``relink``)."""
    if CLI_HELP.search(markdown):
        markdown = CLI_HELP.sub(lambda m: cli_help(), markdown)
    if not README_INCLUDE.search(markdown):
        return markdown
    readme = (repo_root(config) / "README.md").read_text(encoding="utf-8")
    return README_INCLUDE.sub(
        lambda m: relink(readme_section(readme, m["heading"], body_only=bool(m["body"])), page.file.src_uri), markdown
    )


# --------------------------------------------------------------------------- command-line help
#: A line ``<!-- cli-help -->`` is replaced by the ``--help`` of ``geognn`` and of each of its
#: commands, from the parser itself (``geognn.cli.build_parser``), so the page cannot go stale.
CLI_HELP = re.compile(r"^<!-- cli-help -->\s*$", re.MULTILINE)
CLI_WIDTH = "100"  # columns argparse wraps the help to


def cli_help() -> str:
    """Markdown: ``geognn --help``, then one section with ``geognn COMMAND --help`` per command."""
    import argparse
    import warnings

    try:
        with warnings.catch_warnings():  # third-party deprecation notices on importing torch_geometric
            warnings.simplefilter("ignore", DeprecationWarning)
            from geognn.cli import build_parser
    except ImportError as exc:
        raise PluginError(f"the command-line page needs geognn importable by mkdocs' Python: {exc}") from exc
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = CLI_WIDTH
    try:
        parser = build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        parts = ["```text", parser.format_help().rstrip(), "```"]
        for name, command in commands.items():
            parts += ["", f"## geognn {name}", "", "```text", command.format_help().rstrip(), "```"]
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- docstring roles
#: Some docstrings use Sphinx roles (``:class:`X```); mkdocstrings renders the role's name as
#: text before the code. Drop the role name and keep the code.
SPHINX_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):(?=<code>)")


def on_page_content(html, page, config, files):
    """Strip Sphinx role names left in front of inline code by docstrings; fix notebook TOCs."""
    if page is not None and page.file.src_uri.startswith(NOTEBOOK_DIR + "/"):
        fix_notebook_toc(html, page.toc)
    return SPHINX_ROLE.sub("", html)


# --------------------------------------------------------------------------- notebook TOC
#: mkdocs-jupyter builds a notebook's table of contents from a Markdown conversion of it, whose
#: heading ids differ from those of the HTML it renders when a heading holds inline code
#: ("Relax with `X`": TOC "#relax-with", page id "relax-with-x"), so such TOC links were dead.
HEADING_TAG = re.compile(r"<h([1-6])\s[^>]*?id=\"([^\"]+)\"[^>]*>(.*?)</h\1>", re.DOTALL)


def fix_notebook_toc(html: str, toc) -> None:
    """Point each TOC entry at the id (and text) of the page's heading it stands for.

    TOC entries and the page's headings come from the same Markdown cells in the same order, so
    an entry of level L is the next heading of level L in the page whose id is the entry's or
    whose text contains the entry's title (headings inside cell outputs, which the TOC lacks,
    are skipped over that way); failing that, the next heading of level L.
    """
    headings = [
        (int(level), anchor, re.sub(r"<[^>]+>|¶", "", text).strip())  # titles stay HTML-escaped, as Markdown's
        for level, anchor, text in HEADING_TAG.findall(html)
    ]
    position = 0

    def walk(items):
        nonlocal position
        for item in items:
            same_level = [k for k in range(position, len(headings)) if headings[k][0] == item.level]
            title = re.sub(r"<[^>]+>", "", item.title).strip()
            matching = [k for k in same_level if headings[k][1] == item.id or title in headings[k][2]]
            for k in (matching or same_level)[:1]:
                _, item.id, item.title = headings[k]
                position = k + 1
            walk(item.children)

    walk(toc or [])
