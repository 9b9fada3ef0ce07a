"""The page's three catalogs (en, vi, zh) agree with each other and with the page.

Same keys, no empty value, the same {placeholders}; every key the page uses
exists and every key exists for a reason. The files are read from the
installed package, as the gateway serves them.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files

import pytest

LANGS = ("en", "vi", "zh")
UI = files("gateway") / "ui"
# Keys look like "section.name"; app.js passes them to t() as string literals.
KEY_RE = re.compile(r"""["']([a-z]+\.[a-z_]+)["']""")
PLACEHOLDER_RE = re.compile(r"\{(\w+)\}")


def load(lang: str) -> dict[str, str]:
    return json.loads((UI / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))


CATALOGS = {lang: load(lang) for lang in LANGS}


def used_keys() -> set[str]:
    html = (UI / "index.html").read_text(encoding="utf-8")
    # The page's own scripts (app.js, status.js, playground.js...), not vendor/.
    js = "\n".join(f.read_text(encoding="utf-8") for f in UI.iterdir() if f.name.endswith(".js"))
    # Other dotted strings in the scripts (storage keys such as "gateway.lang")
    # are not catalog keys: only the catalog's own sections count.
    sections = {key.split(".")[0] for key in CATALOGS["en"]}
    keys = set(re.findall(r'data-i18n="([^"]+)"', html))
    keys |= {k for k in KEY_RE.findall(js) if k.split(".")[0] in sections}
    return keys


@pytest.mark.parametrize("lang", ["vi", "zh"])
def test_same_keys_as_english(lang: str) -> None:
    en, other = set(CATALOGS["en"]), set(CATALOGS[lang])
    assert other == en, f"missing in {lang}: {sorted(en - other)}; extra: {sorted(other - en)}"


@pytest.mark.parametrize("lang", LANGS)
def test_no_empty_values(lang: str) -> None:
    for key, value in CATALOGS[lang].items():
        assert isinstance(value, str) and value.strip(), f"{lang}.json: {key} is empty"


@pytest.mark.parametrize("lang", ["vi", "zh"])
def test_same_placeholders(lang: str) -> None:
    for key, text in CATALOGS["en"].items():
        want = sorted(PLACEHOLDER_RE.findall(text))
        got = sorted(PLACEHOLDER_RE.findall(CATALOGS[lang][key]))
        assert got == want, f"{lang}.json: {key} has placeholders {got}, English has {want}"


def test_custom_provider_label() -> None:
    labels = {lang: CATALOGS[lang]["type.custom"] for lang in LANGS}
    assert labels == {"en": "Custom Provider", "vi": "Nhà cung cấp tùy chỉnh", "zh": "自定义提供商"}


def test_every_used_key_exists_and_every_key_is_used() -> None:
    used, defined = used_keys(), set(CATALOGS["en"])
    assert used - defined == set(), f"used by the page but not in the catalogs: {used - defined}"
    assert defined - used == set(), f"in the catalogs but never used: {defined - used}"
