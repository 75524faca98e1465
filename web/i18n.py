"""Staff UI languages: Simplified Chinese and English (Flask-Babel).

The choice made with the language link is kept in the session; otherwise the browser's
Accept-Language decides, and Chinese is the fallback (the staff are in mainland China).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Flask, redirect, request, session
from flask_babel import Babel, get_locale
from werkzeug.wrappers import Response

LANGUAGES: dict[str, str] = {"zh": "中文", "en": "English"}
DEFAULT_LANGUAGE = "zh"
TRANSLATIONS = Path(__file__).resolve().parent / "translations"

i18n = Blueprint("i18n", __name__)
log = logging.getLogger("aftercare.web")


def select_locale() -> str:
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return str(chosen)
    return request.accept_languages.best_match(list(LANGUAGES)) or DEFAULT_LANGUAGE


def current_language() -> str:
    locale = get_locale()
    return locale.language if locale is not None else DEFAULT_LANGUAGE


def safe_next(target: str | None, fallback: str = "/") -> str:
    """Only same-site paths are followed after a redirect (no open redirects)."""
    if not target:
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return fallback
    return target


@i18n.get("/lang/<code>")
def switch_language(code: str) -> Response:
    if code in LANGUAGES:
        session["lang"] = code
    return redirect(safe_next(request.args.get("next") or request.referrer and _path_of(request.referrer)))


def _path_of(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.netloc and parts.netloc != request.host:
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def compile_catalogs(directory: Path = TRANSLATIONS) -> list[Path]:
    """Compile each messages.po whose .mo is missing or older (``make`` does this too, with pybabel)."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    written = []
    for po in sorted(directory.glob("*/LC_MESSAGES/messages.po")):
        mo = po.with_suffix(".mo")
        if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        try:
            with po.open("rb") as f:
                catalog = read_po(f)
            tmp = mo.with_name(f".{mo.name}.{os.getpid()}")
            with tmp.open("wb") as f:
                write_mo(f, catalog)
            os.replace(tmp, mo)  # atomic: a concurrent reader never sees half a catalog
            written.append(mo)
        except OSError as exc:  # a read-only install: the UI falls back to English
            log.warning("cannot compile %s: %s", po, exc)
    return written


def init_i18n(app: Flask) -> Babel:
    compile_catalogs()
    app.config.setdefault("BABEL_DEFAULT_LOCALE", DEFAULT_LANGUAGE)
    app.config.setdefault("BABEL_DEFAULT_TIMEZONE", os.environ.get("AFTERCARE_TIMEZONE", "Asia/Shanghai"))
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS)
    babel = Babel(app, locale_selector=select_locale)
    app.register_blueprint(i18n)

    @app.context_processor
    def language_context() -> dict[str, object]:
        return {"languages": LANGUAGES, "current_language": current_language()}

    return babel
