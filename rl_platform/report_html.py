"""Self-contained HTML reports: one file with the plots inlined (base64 PNG), the tables and the resolved
config, so a report can be opened, mailed or attached without the folder it came from.

    write_report_html(report_dir / "rl.md", report_dir / "report.html", title="RL report", config=resolved)

The page is rendered from the run's markdown report (CommonMark + tables); every image the markdown links
to by a relative path is read and embedded, and a missing image is an error rather than a broken picture.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; }
th { background: #f6f8fa; }
img { max-width: 100%; margin: 0.4em 0.4em 0.4em 0; vertical-align: top; }
code, pre { background: #f6f8fa; font-size: 0.88em; }
pre { padding: 0.8em; overflow-x: auto; }
details summary { cursor: pointer; font-weight: 600; margin: 1em 0 0.4em; }
"""


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_data_uri(fig: Any, dpi: int = 110) -> str:
    """A matplotlib figure as an inline PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return png_data_uri(buffer.getvalue())


def markdown_to_html(markdown: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)


def inline_images(body: str, base_dir: Path) -> str:
    """Replaces every relative <img src> with the file's bytes as a data URI."""

    def embed(match: re.Match) -> str:
        src = html.unescape(match.group(2))
        if src.startswith("data:") or re.match(r"[a-z]+://", src):
            return match.group(0)
        path = base_dir / src
        if not path.is_file():
            raise FileNotFoundError(f"report image {src!r} is linked from the report but missing in {base_dir}")
        return f'{match.group(1)}{png_data_uri(path.read_bytes())}{match.group(3)}'

    return re.sub(r'(<img[^>]*?src=")([^"]+)(")', embed, body)


def config_block(config: Any, summary: str = "Resolved config") -> str:
    """A collapsible block with the config as JSON."""
    text = html.escape(json.dumps(config, indent=2, sort_keys=False))
    return f"<details><summary>{html.escape(summary)}</summary><pre>{text}</pre></details>"


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report_html(markdown_path: Path, html_path: Path, title: str, config: Any | None = None) -> Path:
    """Renders the markdown report next to it as one self-contained HTML file; returns its path."""
    body = inline_images(markdown_to_html(markdown_path.read_text()), markdown_path.parent)
    if config is not None:
        body += "\n" + config_block(config)
    html_path.write_text(html_page(title, body))
    return html_path
