"""Tests for saestab.corpus: MediaWiki XML to plain text, JSONL storage, other sources."""

from __future__ import annotations

import bz2
import json
import sys
import types
from pathlib import Path

import pytest

from saestab import corpus
from saestab.io import InputError

ARTICLE = """{{Short description|A test article}}
{{Infobox widget
| name = Widget
| image = Widget.png
}}
'''Test article''' is a [[Widget|small widget]] made in [[Paris]].<ref>{{cite web\
|url=http://example.com|title=Source}}</ref> It weighs 5&nbsp;kg<ref name="w"/>.
[[File:Widget.jpg|thumb|200px|A [[widget]] in use]]
<!-- a hidden comment -->

== History ==
The widget was invented in 1900 ({{citation needed}}) by [[John Smith (inventor)|John Smith]].\
<ref name="s">Smith, ''Widgets'' (1901).</ref>
{| class="wikitable"
|-
! Year !! Count
|-
| 1900 || 5
|}
See [http://example.com the website] or http://example.org for more &amp; other things.
Compare the [[:Category:Widgets|widget category]].[[Category:Widgets]]
[[Image:Other.png|left|A picture]]

=== Later ''years'' ===
* First item with [[link]]
* Second item<br />continued

== Empty section ==
{{Main|Other article}}

== References ==
{{Reflist}}

== External links ==
* [http://example.com Official site]

[[Category:Test articles]]
[[de:Testartikel]]
"""

EXPECTED = """Test article is a small widget made in Paris. It weighs 5 kg.
History
The widget was invented in 1900 by John Smith.
See the website or for more & other things.
Compare the widget category.
Later years
First item with link
Second item
continued"""


def _page(page_id: int, title: str, ns: int, text: str, redirect: str | None = None) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    redirect_el = f'<redirect title="{redirect}" />' if redirect else ""
    return f"""  <page>
    <title>{title}</title>
    <ns>{ns}</ns>
    <id>{page_id}</id>
    {redirect_el}
    <revision>
      <id>{page_id * 100}</id>
      <model>wikitext</model>
      <format>text/x-wiki</format>
      <text xml:space="preserve">{text}</text>
    </revision>
  </page>
"""


def _export(namespaced: bool = True) -> str:
    xmlns = ' xmlns="http://www.mediawiki.org/xml/export-0.10/"' if namespaced else ""
    pages = [
        _page(10, "Old name", 0, "#REDIRECT [[Test article]]", redirect="Test article"),
        _page(12, "Test article", 0, ARTICLE),
        _page(13, "Talk:Test article", 1, "This talk page is long enough to pass. " * 5),
        _page(14, "Stub", 0, "A '''stub''' about [[nothing]]."),
        _page(15, "Legacy redirect", 0, "#redirect [[Stub]] and more words to be long enough"),
    ]
    return (f'<mediawiki{xmlns} version="0.10" xml:lang="en">\n'
            "  <siteinfo><sitename>Wikipedia</sitename></siteinfo>\n"
            + "".join(pages) + "</mediawiki>\n")


@pytest.mark.parametrize("namespaced", [True, False])
def test_wiki_documents_exact_text(tmp_path: Path, namespaced: bool) -> None:
    path = tmp_path / "export.xml"
    path.write_text(_export(namespaced), encoding="utf-8")
    docs = list(corpus.wiki_documents(path, min_chars=30))
    assert docs == [{"id": "12", "title": "Test article", "text": EXPECTED}]


def test_wiki_documents_min_chars_bz2_and_bytes(tmp_path: Path) -> None:
    raw = _export().encode("utf-8")
    path = tmp_path / "export.xml.bz2"
    path.write_bytes(bz2.compress(raw))
    from_path = list(corpus.wiki_documents(path, min_chars=0))
    assert [(d["id"], d["text"]) for d in from_path] == [
        ("12", EXPECTED), ("14", "A stub about nothing.")]
    assert list(corpus.wiki_documents(raw, min_chars=0)) == from_path
    assert list(corpus.wiki_documents(bz2.compress(raw), min_chars=0)) == from_path
    assert list(corpus.wiki_documents(raw, min_chars=len(EXPECTED) + 1)) == []
    assert len(list(corpus.wiki_documents(raw, min_chars=0, max_documents=1))) == 1


def test_wiki_documents_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        corpus.wiki_documents(tmp_path / "missing.xml.bz2")  # raises before iterating
    bad = tmp_path / "bad.xml"
    bad.write_text("<mediawiki><page><title>x</title>", encoding="utf-8")
    with pytest.raises(InputError, match="bad.xml"):
        list(corpus.wiki_documents(bad))


def test_wikitext_unbalanced_markup_and_entities() -> None:
    text = corpus.wikitext_to_text(
        "A '''bold'' caption<br />next &lt;b&gt; [[a|b|c]] &ndash; done.<ref>open {{x}} "
        "'''</ref> end {{t|{{nested}}}} __NOTOC__")
    assert text == "A bold caption\nnext <b> b|c – done. end"


def test_wikitext_punctuation_left_by_removed_templates() -> None:
    text = corpus.wikitext_to_text(
        "'''Achilles''' ({{IPAc-en|k}}; {{lang-grc|x}}, ''Akhilleus'', {{IPA-el|y}}) was a "
        "hero. '''Andorra''' ({{IPAc-en|z}}; {{IPA-ca|w}}), officially a state. Letters "
        "{{angbr|a}}, {{angbr|b}}, {{angbr|c}} and x.")
    assert text == ("Achilles (Akhilleus) was a hero. Andorra, officially a state. "
                    "Letters, and x.")


def test_wikitext_inline_templates_keep_their_words() -> None:
    text = corpus.wikitext_to_text(
        "An area of {{convert|52419|sqmi|km2|abbr=out}} and {{cvt|5|to|10|km}}, "
        "{{lang|fr|[[Paris|la ville]]}} {{nowrap|New York}}, {{circa|1900}}, "
        "{{As of|2010}}, {{frac|1|2}} cup{{citation needed|date=May 2014}}.")
    assert text == ("An area of 52419 sq mi and 5 to 10 km, la ville New York, c. 1900, "
                    "As of 2010, 1/2 cup.")


def test_jsonl_round_trip(tmp_path: Path) -> None:
    docs = [
        {"id": "1", "title": "Ünïcode", "text": "line one\nline two — “quoted”"},
        {"id": "b", "title": "", "text": '{"not": "json inside"}'},
    ]
    path = tmp_path / "sub" / "docs.jsonl"
    assert corpus.write_documents(path, iter(docs)) == 2
    assert corpus.read_documents(path) == docs
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and "Ünïcode" in lines[0]  # one object per line, UTF-8 kept
    assert [p.name for p in path.parent.iterdir()] == ["docs.jsonl"]


def test_write_documents_rejects_bad_documents(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    with pytest.raises(ValueError, match="'text'"):
        corpus.write_documents(path, [{"id": "1", "title": "t"}])
    with pytest.raises(ValueError, match="duplicate"):
        corpus.write_documents(path, [{"id": "1", "title": "", "text": "a"}] * 2)
    assert not path.exists()


@pytest.mark.parametrize("bad_line, match", [
    ('{"id": "2", "title": "t", "text": "unterminated', "invalid JSON"),
    ('["a", "list"]', "JSON object"),
    ('{"id": 2, "title": "t", "text": "x"}', "'id' must be a string"),
    ('{"id": "2", "text": "x"}', "missing key 'title'"),
    ('{"id": "1", "title": "t", "text": "x"}', "duplicate"),
])
def test_read_documents_reports_corrupt_lines(tmp_path: Path, bad_line: str, match: str) -> None:
    path = tmp_path / "docs.jsonl"
    good = json.dumps({"id": "1", "title": "t", "text": "x"})
    path.write_text(good + "\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=match) as err:
        corpus.read_documents(path)
    assert f"{path}:2:" in str(err.value)


def test_read_documents_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        corpus.read_documents(tmp_path / "nope.jsonl")


def test_text_glob_documents(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ä first", encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not matched", encoding="utf-8")
    docs = corpus.text_glob_documents(str(tmp_path / "**" / "*.txt"))
    assert [(d["title"], d["text"]) for d in docs] == [
        ("a", "ä first"), ("b", "bee"), ("c", "sea")]
    assert docs[2]["id"] == str(tmp_path / "sub" / "c.txt")
    with pytest.raises(InputError, match="matches none"):
        corpus.text_glob_documents(str(tmp_path / "*.rst"))
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.txt"):
        corpus.text_glob_documents(str(tmp_path / "*.txt"))


def test_hf_dataset_documents_with_a_fake_datasets(monkeypatch) -> None:
    calls = []
    rows = [{"text": "first", "title": "T1"}, {"text": "  "}, {"text": "third"},
            {"text": "fourth"}]

    def load_dataset(*args, split, streaming, **kwargs):
        calls.append((args, split, streaming, kwargs))
        return list(rows)

    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=load_dataset))
    docs = corpus.hf_dataset_documents("org/corpus", split="validation", max_documents=2)
    assert docs == [{"id": "org/corpus/validation/0", "title": "T1", "text": "first"},
                    {"id": "org/corpus/validation/2", "title": "org/corpus/validation/2",
                     "text": "third"}]
    assert calls == [(("org/corpus",), "validation", True, {})]
    corpus.hf_dataset_documents("org/corpus", config="en", max_documents=1, revision="abc123")
    assert calls[-1][0] == ("org/corpus", "en") and calls[-1][3] == {"revision": "abc123"}
    assert len(corpus.hf_dataset_documents("org/corpus")) == 3
    with pytest.raises(InputError, match="'body'"):
        corpus.hf_dataset_documents("org/corpus", text_field="body")


def test_hf_dataset_documents_without_datasets(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        corpus.hf_dataset_documents("org/corpus")
