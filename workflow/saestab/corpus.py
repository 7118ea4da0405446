"""Text corpora as documents: ``{"id": str, "title": str, "text": str}``, stored as JSONL.

Sources:

* :func:`wiki_documents` — a MediaWiki XML export (plain or ``.bz2``), wikitext converted to
  plain text with ``mwparserfromhell``;
* :func:`text_glob_documents` — one document per UTF-8 text file;
* :func:`hf_dataset_documents` — a Hugging Face dataset (needs the optional ``datasets``).
"""

from __future__ import annotations

import bz2
import glob
import io as _io
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypedDict

import mwparserfromhell
from mwparserfromhell.nodes import (
    Argument,
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Node,
    Tag,
    Template,
    Text,
    Wikilink,
)
from mwparserfromhell.wikicode import Wikicode

from .io import InputError, atomic_path
from .logs import get_logger

log = get_logger("corpus")


class Document(TypedDict):
    id: str
    title: str
    text: str


_KEYS = ("id", "title", "text")

# ---------------------------------------------------------------------------------------------
# JSONL storage


def _check_document(doc: Any) -> str | None:
    """Return what is wrong with ``doc`` as a document, or None if it is fine."""
    if not isinstance(doc, dict):
        return f"expected a JSON object, got {type(doc).__name__}"
    for key in _KEYS:
        if key not in doc:
            return f"missing key {key!r}"
        if not isinstance(doc[key], str):
            return f"key {key!r} must be a string, got {type(doc[key]).__name__}"
    return None


def write_documents(path: str | os.PathLike, docs: Iterable[Document]) -> int:
    """Write documents as JSONL (one object per line, UTF-8) atomically; return how many."""
    n = 0
    seen: set[str] = set()
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for doc in docs:
            problem = _check_document(doc)
            if problem is not None:
                raise ValueError(f"document {n} for {path}: {problem}")
            if doc["id"] in seen:
                raise ValueError(f"document {n} for {path}: duplicate id {doc['id']!r}")
            seen.add(doc["id"])
            record = {key: doc[key] for key in _KEYS}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_documents(path: str | os.PathLike) -> list[Document]:
    """Read a JSONL file written by :func:`write_documents`.

    Raises :class:`InputError` naming the file and line on a missing file, invalid JSON, a line
    that is not a document, or a duplicate id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: expected a JSONL file of documents, but it does not exist")
    docs: list[Document] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{lineno}: expected a JSON document, got invalid JSON "
                                 f"({err})") from err
            problem = _check_document(doc)
            if problem is not None:
                raise InputError(f"{path}:{lineno}: expected a document "
                                 f'{{"id", "title", "text"}}: {problem}')
            if doc["id"] in seen:
                raise InputError(f"{path}:{lineno}: duplicate document id {doc['id']!r}")
            seen.add(doc["id"])
            docs.append(Document(id=doc["id"], title=doc["title"], text=doc["text"]))
    return docs


# ---------------------------------------------------------------------------------------------
# Wikitext -> plain text

# Tags whose contents are not prose: references, tables, galleries, maths, code, ...
_DROP_TAGS = frozenset({
    "ref", "references", "table", "tr", "td", "th", "caption", "gallery", "math", "chem", "ce",
    "timeline", "imagemap", "score", "syntaxhighlight", "source", "pre", "code", "graph",
    "mapframe", "maplink", "templatedata", "templatestyles", "categorytree", "inputbox",
    "noinclude", "includeonly", "hiero", "style", "script",
})
_BREAK_TAGS = frozenset({"br", "hr", "p", "div", "blockquote", "poem", "center"})
# Link namespaces that do not display as text.
_DROP_LINK_PREFIXES = frozenset({"file", "image", "media", "category"})
# Sections made of citations and link lists rather than prose.
_DROP_SECTIONS = frozenset({
    "references", "notes", "footnotes", "citations", "sources", "bibliography",
    "further reading", "external links", "see also", "notes and references",
    "references and notes", "works cited",
})
# Inline templates that render words in running text; all other templates are dropped.
_INLINE_TEMPLATES = {
    "convert": "convert", "cvt": "convert",
    "lang": "last", "transl": "last",
    "nowrap": "first", "nobr": "first", "small": "first", "smaller": "first", "big": "first",
    "sic": "first", "val": "first", "mvar": "first", "em": "first", "strong": "first",
    "circa": "circa", "c.": "circa",
    "as of": "as of",
    "frac": "frac", "fraction": "frac", "sfrac": "frac",
}
_CONVERT_RANGES = frozenset({"to", "-", "–", "and", "or", "x", "by", "+/-", "±"})
_CONVERT_UNITS = {
    "sqmi": "sq mi", "sqkm": "km2", "sqft": "sq ft", "e6acre": "million acres",
    "e3acre": "thousand acres", "e6km2": "million km2", "e6sqmi": "million sq mi",
    "F": "°F", "C": "°C", "mph": "mph", "kph": "km/h", "km/h": "km/h",
}
_INTERWIKI = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*|simple")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_REF = re.compile(r"<ref\b[^>]*/>|<ref\b[^>]*>.*?</ref\s*>|<references\b[^>]*/>", re.DOTALL | re.I)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_TABLE_LINE = re.compile(r"^\s*(?:\{\||\|\}|\|-|\||!)")
_EMPTY_PARENS = re.compile(r"\(\s*\)")
# "(; , Orycteropus" and "lit. ,, and" after removed templates
_PAREN_LEAD = re.compile(r"\(\s*(?:[,;:]\s*)+")
_PAREN_TRAIL = re.compile(r"(?:\s*[,;:])+\s*\)")
_REPEATED_COMMA = re.compile(r",(?:\s*,)+")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?)])")
_SPACE_AFTER_OPEN = re.compile(r"\( +")
_QUOTES = re.compile(r"'{2,}")
_INLINE_SPACE = re.compile(r"[^\S\n]+")


def _link_text(link: Wikilink) -> str | None:
    """Display text of an internal link, or None if it does not display as text."""
    title = str(link.title).strip()
    leading_colon = title.startswith(":")
    title = title.lstrip(":").strip()
    prefix, sep, _ = title.partition(":")
    prefix = prefix.strip().lower()
    if sep and not leading_colon:
        if prefix in _DROP_LINK_PREFIXES:
            return None
        if link.text is None and _INTERWIKI.fullmatch(prefix):
            return None  # interlanguage link such as [[de:Anarchismus]]
    if link.text is not None:
        return _render(link.text)
    return _render(mwparserfromhell.parse(title))


def _positional(template: Template) -> list[str]:
    return [_render(param.value).strip() for param in template.params if not param.showkey]


def _render_template(template: Template) -> str:
    """Text of the few inline templates that carry prose (see ``_INLINE_TEMPLATES``), else ""."""
    name = str(template.name).strip().lower().replace("_", " ")
    kind = _INLINE_TEMPLATES.get(name)
    if kind is None:
        return ""
    args = _positional(template)
    if kind == "first":
        return args[0] if args else ""
    if kind == "last":
        return args[-1] if len(args) >= 2 else ""
    if kind == "circa":
        return "c. " + args[0] if args else "c."
    if kind == "as of":
        return "As of " + " ".join(args[:1]) if args else ""
    if kind == "frac":
        if len(args) == 3:
            return f"{args[0]} {args[1]}/{args[2]}"
        return f"{args[0]}/{args[1]}" if len(args) == 2 else (f"1/{args[0]}" if args else "")
    if kind == "convert" and len(args) >= 2:
        # {{convert|5|km|mi}} -> "5 km"; {{convert|5|to|10|km}} -> "5 to 10 km"
        if args[1] in _CONVERT_RANGES and len(args) >= 4:
            value, unit = f"{args[0]} {args[1]} {args[2]}", args[3]
        else:
            value, unit = args[0], args[1]
        return f"{value} {_CONVERT_UNITS.get(unit, unit)}"
    return ""


def _render_node(node: Node) -> str:
    if isinstance(node, Text):
        return str(node.value)
    if isinstance(node, Template):
        return _render_template(node)
    if isinstance(node, (Comment, Argument)):
        return ""
    if isinstance(node, HTMLEntity):
        try:
            return node.normalize()
        except ValueError:  # an unknown entity: keep nothing rather than markup
            return ""
    if isinstance(node, Wikilink):
        return _link_text(node) or ""
    if isinstance(node, ExternalLink):
        # [url title] shows its title; [url] shows a footnote number and a bare url is a url.
        if node.brackets and node.title is not None:
            return _render(node.title)
        return ""
    if isinstance(node, Heading):
        return "\n" + _render(node.title).strip() + "\n"
    if isinstance(node, Tag):
        name = str(node.tag).strip().lower()
        if name in _DROP_TAGS:
            return ""
        if name == "nowiki":
            return str(node.contents) if node.contents is not None else ""
        if name in ("li", "dd", "dt"):  # list markup (*, #, :, ;): the item follows as text
            return "\n"
        inner = _render(node.contents) if node.contents is not None else ""
        if name in _BREAK_TAGS:
            return "\n" + inner + "\n"
        return inner
    return ""


def _render(code: Wikicode) -> str:
    return "".join(_render_node(node) for node in code.nodes)


def _clean_lines(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if _TABLE_LINE.match(line):
            continue  # a table the parser could not match
        line = _MAGIC_WORD.sub("", line)
        line = _QUOTES.sub("", line)
        line = _INLINE_SPACE.sub(" ", line)
        line = _REPEATED_COMMA.sub(",", line)
        line = _PAREN_LEAD.sub("(", line)
        line = _PAREN_TRAIL.sub(")", line)
        line = _EMPTY_PARENS.sub("", line)
        line = _SPACE_AFTER_OPEN.sub("(", line)
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
        line = _INLINE_SPACE.sub(" ", line).strip()
        if line:
            lines.append(line)
    return "\n".join(lines)


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of one article's wikitext.

    Templates (except a few inline ones that carry words: convert, lang, nowrap, circa, ...),
    references, tables, comments, file/image/category and interlanguage links are removed;
    links keep their text; headings keep their text as a line of their own, unless their
    section has no text left; sections such as "References" and "External links" are dropped;
    whitespace is collapsed (one line per paragraph, list item or heading, no blank lines).
    """
    # References and comments go before parsing: they are never prose, and the parser gives
    # up on tags that enclose unbalanced markup, leaving them in the text.
    wikitext = _REF.sub("", _COMMENT.sub("", wikitext))
    # Bold/italic quotes are removed as text: unbalanced ones otherwise derail the parser.
    code = mwparserfromhell.parse(wikitext, skip_style_tags=True)
    # Blocks: (heading level, heading text) or (0, body text).
    blocks: list[tuple[int, str]] = []
    body: list[str] = []
    skip_level: int | None = None
    for node in code.nodes:
        if isinstance(node, Heading):
            if skip_level is not None and node.level > skip_level:
                continue
            skip_level = None
            blocks.append((0, _clean_lines("".join(body))))
            body = []
            title = _clean_lines(_render(node.title))
            if title.lower() in _DROP_SECTIONS:
                skip_level = node.level
            else:
                blocks.append((node.level, title))
        elif skip_level is None:
            body.append(_render_node(node))
    blocks.append((0, _clean_lines("".join(body))))
    return "\n".join(text for level, text in _drop_empty_sections(blocks) if text)


def _drop_empty_sections(blocks: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Remove headings with no body text before the next heading of the same or higher rank."""
    kept = []
    for i, (level, text) in enumerate(blocks):
        if level > 0:
            has_body = False
            for next_level, next_text in blocks[i + 1:]:
                if 0 < next_level <= level:
                    break
                if next_level == 0 and next_text:
                    has_body = True
                    break
            if not has_body:
                continue
        kept.append((level, text))
    return kept


# ---------------------------------------------------------------------------------------------
# MediaWiki XML export


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for child in elem:
        if _local(child.tag) == name:
            return child
    return None


def _open_xml(source: str | os.PathLike | bytes) -> tuple[IO[bytes], str]:
    """An open binary stream of XML and a name for error messages."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        if data[:3] == b"BZh":
            data = bz2.decompress(data)
        return _io.BytesIO(data), "<bytes>"
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: expected a MediaWiki XML export (.xml or .xml.bz2), but the "
                         "file does not exist")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb"), str(path)
    return open(path, "rb"), str(path)


def wiki_documents(source: str | os.PathLike | bytes, min_chars: int = 500,
                   max_documents: int | None = None) -> Iterator[Document]:
    """Iterate over the articles of a MediaWiki XML export as plain-text documents.

    ``source`` is a path to a ``.xml`` or ``.bz2`` file, or the XML bytes (bz2-compressed or
    not); a missing file raises at once, a malformed one while iterating. Only namespace-0 pages
    that are not redirects are kept, and only those whose plain text (see
    :func:`wikitext_to_text`) has at least ``min_chars`` characters. The document id is the
    page id, the title the page title.
    """
    stream, name = _open_xml(source)
    return _iter_pages(stream, name, min_chars, max_documents)


def _iter_pages(stream: IO[bytes], name: str, min_chars: int,
                max_documents: int | None) -> Iterator[Document]:
    n = 0
    with stream:
        try:
            root: ET.Element | None = None
            for event, elem in ET.iterparse(stream, events=("start", "end")):
                if root is None:
                    root = elem
                if event != "end" or _local(elem.tag) != "page":
                    continue
                doc = _page_document(elem, name)
                root.clear()  # drop finished pages so memory stays flat on large dumps
                if doc is None or len(doc["text"]) < min_chars:
                    continue
                yield doc
                n += 1
                if max_documents is not None and n >= max_documents:
                    return
        except (ET.ParseError, OSError, EOFError) as err:
            raise InputError(f"{name}: expected a MediaWiki XML export, but it could not be "
                             f"parsed ({err})") from err


def _page_document(page: ET.Element, name: str) -> Document | None:
    ns = _child(page, "ns")
    if ns is None or (ns.text or "").strip() != "0":
        return None
    if _child(page, "redirect") is not None:
        return None
    title_el, id_el, revision = _child(page, "title"), _child(page, "id"), _child(page, "revision")
    if title_el is None or id_el is None:
        raise InputError(f"{name}: expected every <page> to have a <title> and an <id>")
    text_el = _child(revision, "text") if revision is not None else None
    wikitext = (text_el.text or "") if text_el is not None else ""
    if wikitext.lstrip().lower().startswith("#redirect"):
        return None
    return Document(id=(id_el.text or "").strip(), title=(title_el.text or "").strip(),
                    text=wikitext_to_text(wikitext))


# ---------------------------------------------------------------------------------------------
# Other sources


def text_glob_documents(pattern: str) -> list[Document]:
    """One document per file matching ``pattern`` (recursive ``**`` allowed), in sorted order.

    The id is the file's path, the title its name without suffix; files are read as UTF-8.
    """
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not paths:
        raise InputError(f"{pattern}: expected the pattern to match text files, but it matches "
                         "none")
    docs = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: expected UTF-8 text ({err})") from err
        docs.append(Document(id=str(path), title=path.stem, text=text))
    return docs


def hf_dataset_documents(name: str, split: str = "train", text_field: str = "text",
                         max_documents: int | None = None, config: str | None = None,
                         title_field: str | None = "title",
                         revision: str | None = None) -> list[Document]:
    """Documents from a Hugging Face dataset at ``revision``, streamed with
    ``datasets.load_dataset`` (only the first ``max_documents`` are read, not the whole dataset).

    Rows with an empty ``text_field`` are skipped. The id is ``"<name>/<split>/<row>"``; the
    title is ``title_field`` when the row has it, else the id. Needs the optional ``datasets``
    package. The workflow runs this on the submitting host (``extract_corpus`` is a local rule),
    so compute nodes need no network.
    """
    try:
        import datasets  # noqa: PLC0415 (optional dependency)
    except ImportError as err:
        raise ImportError("hf_dataset_documents needs the Hugging Face 'datasets' package: "
                          "pip install datasets") from err
    args: tuple[str, ...] = (name,) if config is None else (name, config)
    kwargs = {"revision": revision} if revision else {}
    rows = datasets.load_dataset(*args, split=split, streaming=True, **kwargs)
    docs: list[Document] = []
    for i, row in enumerate(rows):
        if max_documents is not None and len(docs) >= max_documents:
            break
        if text_field not in row:
            raise InputError(f"dataset {name!r} (split {split!r}): expected a text field "
                             f"{text_field!r}, rows have {sorted(row)}")
        text = row[text_field]
        if not isinstance(text, str):
            raise InputError(f"dataset {name!r} (split {split!r}) row {i}: field {text_field!r} "
                             f"must be a string, got {type(text).__name__}")
        if not text.strip():
            continue
        doc_id = f"{name}/{split}/{i}"
        title = row.get(title_field) if title_field else None
        docs.append(Document(id=doc_id, title=title if isinstance(title, str) else doc_id,
                             text=text))
    return docs


__all__ = [
    "Document",
    "hf_dataset_documents",
    "read_documents",
    "text_glob_documents",
    "wiki_documents",
    "wikitext_to_text",
    "write_documents",
]
