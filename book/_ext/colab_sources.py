"""Point the launch buttons of the executed notebook pages at their sources.

The book is built from executed copies in ``book/notebooks/`` (generated, not committed); the
sources a reader should open on Colab are ``notebooks/<name>.ipynb``. sphinx-book-theme builds the
launch URLs from the page's own path, so this rewrites them after the theme has added them.
"""

from __future__ import annotations

EXECUTED = "book/notebooks/"
SOURCES = "notebooks/"


def _rewrite(buttons: list) -> None:
    for button in buttons:
        if isinstance(button, dict):
            if isinstance(button.get("url"), str):
                button["url"] = button["url"].replace(f"/{EXECUTED}", f"/{SOURCES}")
            if isinstance(button.get("buttons"), list):
                _rewrite(button["buttons"])


def _point_to_sources(app, pagename, templatename, context, doctree) -> None:
    if pagename.startswith(EXECUTED):
        _rewrite(context.get("header_buttons", []))


def setup(app):
    app.connect("html-page-context", _point_to_sources, priority=900)  # after the theme's (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
