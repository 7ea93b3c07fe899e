"""MkDocs hook: the experiment folders' READMEs are written for browsing the repository, where a
link such as ``../../docs/pretrained.md`` or ``../../benchmarks/throughput.py`` works. In the
site (``docs/experiments`` links to ``experiments/``) the first becomes ``../../pretrained.md``
and the second, a file the site does not hold, its plain text, so both views work and the strict
build stays strict for every other link."""

from __future__ import annotations

import re

LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")


def on_page_markdown(markdown: str, page, **_) -> str:
    uri = page.file.src_uri
    if not uri.startswith("experiments/"):
        return markdown
    to_repository_root = "../" * uri.count("/")

    def relink(match: re.Match) -> str:
        target = match.group("target")
        if not target.startswith(to_repository_root) or target.startswith(to_repository_root + "../"):
            return match.group(0)
        inside = target[len(to_repository_root):]
        if inside.startswith("experiments/"):
            return f"[{match.group('text')}]({to_repository_root}{inside})"
        if inside.startswith("docs/"):
            return f"[{match.group('text')}]({to_repository_root}{inside[len('docs/'):]})"
        return match.group("text")

    return LINK.sub(relink, markdown)
