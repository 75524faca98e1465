"""Browser tests (Playwright driving Chromium); a package so its conftest does not shadow tests/conftest.py."""
