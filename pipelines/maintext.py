"""Main text at trafilatura's precision and close to Resiliparse's speed (``read.extractor: hybrid``).

Resiliparse's main-content mode is fast but lets page furniture through (its precision on trafilatura's
gold set is 0.77: bylines, "related articles", newsletter boxes, footers); trafilatura finds the article
container and prunes boilerplate by class and id names, but walks an lxml tree in Python (10× slower).
This module does trafilatura's kind of work on Resiliparse's C++ DOM, where every per-element decision
is a CSS selector evaluated by Lexbor, and Python only sees the extracted blocks:

1. ``base``: Resiliparse's main content of the whole page, as minimal HTML (paragraphs, headings, lists,
   links kept) and then cleaned block by block (:func:`clean_blocks`: link-dense blocks, text outside
   paragraphs when a page has plenty of paragraph text, trailing headings — trafilatura's rules);
2. ``candidate``: an article container (:data:`CONTAINER_SELECTORS`, most specific first, as trafilatura's
   ``BODY_XPATH``) holding enough text, extracted with the boilerplate selectors (:data:`BOILERPLATE`)
   skipped inside it — unless they would remove almost all of it — and cleaned the same way;
3. the result is ``base`` cut to the candidate's span (:func:`_cut_to_candidate`): what ``base`` has
   before the candidate (titles and leads, which sit outside article containers) and the candidate's
   lines that ``base`` also has. Both extractors must agree on a line of the article, which is where
   the precision comes from. A container that shares no line with ``base`` gives way to the next one,
   and then to the whole body pruned the same way.

A page where nothing agrees with ``base`` although an article container exists is a hard page (``how``
is ``"container"``, about 2% of the gold set): ``html_to_text`` hands those to trafilatura's fast mode.

On trafilatura's 990-page gold set (``bench/bench_extract.py``) this scores F1 0.922 alone and 0.923
with trafilatura on the hard pages, against Resiliparse's 0.847 and trafilatura's 0.919. The thresholds
below were chosen on half of the pages (split by URL hash) and hold on the other half.
"""

from __future__ import annotations

import html as _html
import re

# -- where the article is ----------------------------------------------------------------------------

_BLOCK = ":is(article,div,main,section)"


def _any(attr: str, op: str, values: list[str], flag: str = "") -> list[str]:
    return [f'[{attr}{op}"{v}"{flag}]' for v in values]


def _by_attribute(tags: str, selectors: list[str], prefix: str = "") -> str:
    """``prefix tags:is(selectors)`` for attribute selectors, written as one alternative per attribute
    name: ``[class]div:is([class*=a],[class*=b]),[id]div:is([id*=c])``. It matches the same elements;
    Lexbor tries the alternatives of an ``:is`` one by one, so this rejects an element without the
    attribute (most elements) once instead of once per value: skipping :data:`BOILERPLATE` costs a
    fifth less (measured on the gold set's pages: 0.87 s instead of 1.11 s on top of extraction)."""
    groups: dict[str, list[str]] = {}
    for s in selectors:
        groups.setdefault(re.match(r"\[([\w-]+)", s).group(1), []).append(s)
    return ",".join(f"{prefix}[{name}]{tags}:is({','.join(g)})" for name, g in groups.items())


#: article containers, most specific first (the order and vocabulary of trafilatura's BODY_XPATH)
CONTAINER_SELECTORS: list[str] = [
    _by_attribute(_BLOCK,
        ['[class="post"]', '[class="entry"]', '[itemprop="articleBody"]', '[id="articleContent"]']
        + _any("id", "*=", ["entry-content", "article-content", "art-content", "article__content", "articlebody",
                            "article-body", "article__body", "articleBody", "body-text"])
        + _any("class", "*=", ["post-text", "post_text", "post-body", "postentry", "post-entry", "post-content",
                               "post_content", "postcontent", "postContent", "post_inner_wrapper", "article-text",
                               "articletext", "articleText", "entry-content", "page-content", "text-content",
                               "article-content", "art-content", "article__content", "articlebody", "article-body",
                               "article__body", "articleBody", "ArticleContent", "body-text", "article__container"])
    ),
    "article",
    _by_attribute(_BLOCK,
        ['[role="article"]', '[id="article"]', '[id="story"]', '[class="postarea"]', '[class="art-postcontent"]',
         '[class="text"]', '[class="cell"]', '[class="story"]', '[id^="primary"]', '[id*="story-body"]',
         '[class*="fulltext" i]', '[class^="article "]']
        + _any("class", "*=", ["post-bodycopy", "story-content", "storycontent", "theme-content", "blog-content",
                               "section-content", "single-content", "single-post", "main-column", "wpb_text_column",
                               "story-body", "field-body"])
    ),
    _by_attribute(_BLOCK,
        ['[id="content"]', '[class="content"]', '[id*="main-content" i]', '[class*="main-content" i]',
         '[class*="page-content" i]']
        + _any("id", "*=", ["content-main", "content-body", "contentBody"])
        + _any("class", "*=", ["content-main", "content_main", "content-body", "content__body"])
    ),
    ":is(article,div,section):is([class^=main],[id^=main],[role^=main]), main",
]

# -- what is not the article inside it ---------------------------------------------------------------

#: substrings of id or class (a leading ^ anchors at the start) that name page furniture; the
#: vocabulary of trafilatura's OVERALL_DISCARD_XPATH
_ID_AND_CLASS = ["^shar", "social", "viral", "newsletter", "syndication", "tags", "sidebar", "banner", "breadcrumb",
                 "bread-crumb", "button", "author", "cookie"]
_ID_ONLY = ["^jp-", "^dpsp-content", "footer", "Footer", "share", "Share", "nav", "Nav", "menu", "related",
            "message-container", "premium", "^ad-"]
_CLASS_ONLY = ["^nav", "^post-nav", "subnav", "avigation", "navbar", "navbox", "menu", "bar", " ad ", "-ad-", "^ad-",
               " ad-", "dfpad", "dfpAd", "outbrain", "taboola", "criteo", "paid-content", "paidcontent", "widget",
               "footer", "Footer", "byline", "Byline", "share-", "sociable", "embedded", "embed", "tag-list", "consent",
               "modal-content", "permission", "elated", "next-", "-stories", "most-popular", "more-on", "meta",
               "rating", "attachment", "timestamp", "user-info", "user-profile", "-icon", "article-infos", "slide",
               "viewport", "overlay", "options", "expand", "obfuscated", "blurred"]
#: hidden or reply furniture, any element
_HIDDEN = ['[class="comments-title"]', '[id^="reply-"]', '[class^="reply-"]', '[id*="hidden"]', '[style*="hidden"]',
           '[style*="display:none"]', '[style*="display: none"]', '[id*="reader-comments"]', '[id*="akismet"]',
           '[class^="hide-"]', '[class*="comments-title"]', '[class*="nocomments"]', '[class*="-reply-"]',
           '[class*="message"]', '[class*="akismet"]', '[class*="suggest-links"]', '[class*="-hide-"]',
           '[class*="hide-print"]', '[class*=" hidden"]', '[class*=" hide"]', '[class*="noprint"]',
           '[class*="notloaded"]', '[aria-hidden="true"]']


def _attr(attr: str, token: str) -> str:
    return f'[{attr}^="{token[1:]}"]' if token.startswith("^") else f'[{attr}*="{token}"]'


_CONTAINERS = ":is(div,li,ul,ol,dl,p,section,span)"
# "body > * " keeps the candidate itself (the parsed subtree's first element) out of reach: only what is
# inside the article container is pruned, as trafilatura prunes only below its BODY_XPATH match
_INSIDE = "body > * "
#: boilerplate inside an article container (skipped unless that would leave less than a seventh)
BOILERPLATE: list[str] = [
    _by_attribute(_CONTAINERS, [_attr(a, t) for t in _ID_AND_CLASS for a in ("id", "class")]
                  + [_attr("id", t) for t in _ID_ONLY] + [_attr("class", t) for t in _CLASS_ONLY]
                  + ['[role*="nav" i]', "[data-lp-replacement-content]"], _INSIDE),
    _by_attribute("", _HIDDEN, _INSIDE),
]
#: never article text: page structure, forms, media captions, teasers (trafilatura's tree cleaning)
ALWAYS_SKIP: list[str] = [
    "aside", "nav", "footer", "form", "header", "figure", "figcaption", "button", "select", "textarea", "label",
    "iframe", "noscript", "time", "address", "menu", "dialog", "fieldset",
    _INSIDE + _CONTAINERS + ":is([id*=caption],[class*=caption],[id*=teaser i],[class*=teaser i])",
]

# each as one comma-separated selector list: Lexbor matches it in one pass per element
_SKIP_FURNITURE = [",".join(ALWAYS_SKIP + BOILERPLATE)]
_SKIP_STRUCTURE = [",".join(ALWAYS_SKIP)]

_MINIMAL = dict(preserve_formatting="minimal_html", alt_texts=False, links=True, list_bullets=True, comments=False)

# -- blocks of minimal HTML --------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]+>")
_LINK = re.compile(r"<a\b[^>]*>(.*?)</a>", re.S)
_HEADING = re.compile(r"<h([1-6])>")
_LIST_ITEM = re.compile(r"\s*<li>")
_LIST_OPEN = re.compile(r"<(?:ul|ol)>")
_LIST_CLOSE = re.compile(r"</(?:ul|ol)>")


def blocks(minimal_html: str) -> list[tuple[str, str]]:
    """(kind, markup) of each top-level block of Resiliparse's minimal HTML: ``p``, ``h``, ``list``,
    ``pre``, or ``bare`` (a line of text outside any of them: div and span text, table cells)."""
    lines = minimal_html.split("\n")
    out: list[tuple[str, str]] = []
    i, n = 0, len(lines)

    def until(j: int, end: str) -> int:
        while j < n - 1 and end not in lines[j]:
            j += 1
        return j

    while i < n:
        s = lines[i].lstrip()
        if not s:
            i += 1
            continue
        if s.startswith("<p>"):
            kind, j = "p", until(i, "</p>")
        elif m := _HEADING.match(s):
            kind, j = "h", until(i, f"</h{m.group(1)}>")
        elif s.startswith(("<ul>", "<ol>")):
            kind, j, depth = "list", i, 0
            while j < n:
                depth += len(_LIST_OPEN.findall(lines[j])) - len(_LIST_CLOSE.findall(lines[j]))
                if depth <= 0:
                    break
                j += 1
            j = min(j, n - 1)
        elif s.startswith("<pre>"):
            kind, j = "pre", until(i, "</pre>")
        else:
            kind, j = "bare", i
        out.append((kind, "\n".join(lines[i : j + 1])))
        i = j + 1
    return out


def block_text(kind: str, markup: str) -> str:
    if kind == "list":
        markup = _LIST_ITEM.sub("\n• ", markup)
    text = _TAG.sub("", markup)
    if "&" in text:
        text = _html.unescape(text)
    if kind == "pre":
        return text
    if "\n" not in text:  # most blocks: one line
        return " ".join(text.split())
    return "\n".join(" ".join(line.split()) for line in text.split("\n") if line.strip())


def link_dense(kind: str, markup: str, text_len: int, last: bool) -> bool:
    """trafilatura's link-density test: short blocks that are mostly links (or mostly short links), and
    long ones that are nothing but many links."""
    if "<a" not in markup:
        return False
    links = [" ".join(_html.unescape(_TAG.sub("", a)).split()) for a in _LINK.findall(markup)]
    links = [x for x in links if x]
    if not links:
        return False
    link_len = sum(map(len, links))
    if len(links) == 1 and len(links[0]) > 100 and len(links[0]) > 0.9 * text_len:
        return True
    limit = (60 if last else 30) if kind == "p" else (300 if last else 100)
    if text_len < limit:
        short = sum(len(x) < 10 for x in links)
        return link_len > 0.8 * text_len or (len(links) > 1 and short / len(links) > 0.8)
    return len(links) > 4 and link_len > 0.9 * text_len and link_len < 100 * len(links)


def clean_blocks(minimal_html: str, paragraph_chars: int = 2000) -> str:
    """Plain text of the blocks that are article text: link-dense blocks out; text outside paragraphs,
    headings and lists out once the page has ``paragraph_chars`` of paragraph text (as trafilatura
    leaves div text out then); headings at the end out (a heading with nothing after it introduces
    furniture: "Related articles")."""
    items = [(k, m, t) for k, m in blocks(minimal_html) if (t := block_text(k, m))]
    paragraphs = sum(len(t) for k, _, t in items if k == "p")
    keep: list[tuple[str, str]] = []
    for i, (kind, markup, text) in enumerate(items):
        if kind != "pre" and link_dense(kind, markup, len(text), i == len(items) - 1):
            continue
        if kind == "bare" and paragraphs >= paragraph_chars:
            continue
        keep.append((kind, text))
    while keep and keep[-1][0] == "h":
        keep.pop()
    return "\n\n".join(t for _, t in keep)


# -- the extractor ------------------------------------------------------------------------------------


def _compact(s: str) -> str:
    return "".join(s.split())


def _cut_to_candidate(base: str, candidate: str, min_line: int = 50, min_head_line: int = 20,
                      min_inside_line: int = 100) -> str | None:
    """``base`` cut to the candidate's span. The span runs from the first to the last line of at least
    ``min_line`` characters that both have; before it, base's lines of at least ``min_head_line``
    characters stay (titles and leads sit outside article containers; bylines and dates are shorter);
    inside it, the lines the candidate has too, and lines of ``min_inside_line`` characters (text the
    candidate splits differently); after it, the lines the candidate has, up to the first it has not
    (sign-offs, last list items). None when the two share no line of ``min_line`` characters."""
    lines = base.split("\n")
    keys = [_compact(x) for x in lines]
    in_candidate = {_compact(x) for x in candidate.split("\n")}
    shared = [i for i, k in enumerate(keys) if len(k) >= min_line and k in in_candidate]
    if not shared:
        return None
    first, last = shared[0], shared[-1]
    head = [x for x in lines[:first] if len(x.strip()) >= min_head_line or not x.strip()]
    span = [x for x, k in zip(lines[first : last + 1], keys[first : last + 1])
            if not k or k in in_candidate or len(k) >= min_inside_line]
    tail = []
    for x, k in zip(lines[last + 1 :], keys[last + 1 :]):
        if k and k not in in_candidate:
            break
        tail.append(x)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(head + span + tail)).strip()


def _candidate_text(tree, text_len: int) -> str:
    """Cleaned text of a parsed container (or of the whole page) with furniture skipped; ``text_len`` is
    the length of all its text."""
    from resiliparse.extract.html2text import extract_plain_text

    pruned = clean_blocks(extract_plain_text(tree, main_content=False, skip_elements=_SKIP_FURNITURE, **_MINIMAL))
    if len(pruned) * 7 >= text_len:  # cheap: pruning left more than a seventh of all the text
        return pruned
    whole = clean_blocks(extract_plain_text(tree, main_content=False, skip_elements=_SKIP_STRUCTURE, **_MINIMAL))
    return pruned if len(pruned) * 7 > len(whole) else whole


def extract_main_text(html: str, min_candidate: int = 500, min_share: float = 0.3) -> tuple[str, str]:
    """(text, how) of an HTML page. ``how``: ``"merge"`` (base and an article container agree),
    ``"body"`` (no container does, the pruned body does), ``"container"`` (a container with
    ``min_candidate`` characters and ``min_share`` of base's length exists, but neither it nor the body
    shares a line with base: its text is returned), ``"base"`` (nothing to cut base to), ``"empty"``
    (no body)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    body = tree.body
    if body is None:
        return "", "empty"
    base = clean_blocks(extract_plain_text(tree, main_content=True, **_MINIMAL))
    enough = max(min_candidate, min_share * len(base))
    unmerged = None
    for selector in CONTAINER_SELECTORS:
        node = body.query_selector(selector)
        if node is None:
            continue
        text_len = len(node.text)
        if text_len < enough:  # its extracted text is shorter still: no need to extract it
            continue
        candidate = _candidate_text(HTMLTree.parse(node.html), text_len)
        if len(candidate) >= enough:
            merged = _cut_to_candidate(base, candidate)
            if merged is not None:
                return merged, "merge"
            unmerged = unmerged or candidate
    # no article container agrees with base: the whole body, pruned the same way, still tells page
    # furniture from text
    candidate = _candidate_text(tree, len(body.text))  # the page's own tree: body is its top
    if len(candidate) >= min_share * len(base):
        merged = _cut_to_candidate(base, candidate)
        if merged is not None:
            return merged, "body"
    if unmerged is not None:  # a container, but base found its text elsewhere: a hard page
        return unmerged, "container"
    return base, "base"
