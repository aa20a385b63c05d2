"""Header buttons of the book: launch and repository buttons only with a real address, launch
buttons pointing at the notebook sources.

- ``repository.url`` in ``_config.yml`` is the one place that holds the repository address. While it
  is empty (the project has no public address yet) no launch button and no repository button is
  rendered: a button to a fake address would be worse than none. Once it is set, the repository
  button is turned on here (jupyter-book refuses ``use_repository_button`` without a URL, so the
  config keeps it off and this extension decides).
- The book is built from executed copies in ``book/notebooks/`` (generated, not committed); the
  sources a reader should open on Colab are ``notebooks/<name>.ipynb``. sphinx-book-theme builds
  the launch URLs from the page's own path, so this rewrites them after the theme has added them.
  The download buttons keep pointing at the executed copy the build ships (``_sources/book/...``):
  rewriting them too sent "Download source file" to a file that does not exist.
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
    if pagename.startswith(EXECUTED):  # the launch buttons only: the download links stay on the build's copies
        _rewrite([b for b in context.get("header_buttons", []) if b.get("label") == "launch-buttons"])


def _buttons_need_an_address(app, config) -> None:
    options = config.html_theme_options
    if (options.get("repository_url") or "").strip():
        options["use_repository_button"] = True
    else:
        options.pop("repository_url", None)
        options.pop("launch_buttons", None)
        options["use_repository_button"] = False


def setup(app):
    app.connect("config-inited", _buttons_need_an_address)
    app.connect("html-page-context", _point_to_sources, priority=900)  # after the theme's (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
