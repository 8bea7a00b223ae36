"""Click tracking and UTM: what is rewritten, what is left byte for byte, where clicks lead."""

from __future__ import annotations

import html
import re
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import SigningKey
from core.instrument import instrument
from core.links import links, trackable
from core.pipeline import Document, Recipient
from core.storage import EventRecord
from core.testing import Harness, base_document
from core.tokens import TokenCodec
from plugins.ganalytics import utm_tagger
from tests.serving import ScaisendServer, free_port

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "html"
CORPUS_FILES = sorted(CORPUS.rglob("*.html"))
BASE = "https://track.example.test"
MESSAGE = "c" * 32


def settings_with(**overrides):
    values = {
        "open_tracking": {"enable": False},
        "click_tracking": {"enable": True, "enable_text": False},
        "ganalytics": {"enable": False},
        "subscription_tracking": {"enable": False},
        "image_proxy": {"embed_mode": "proxy"},
    }
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Harness:
    return Harness(tmp_path_factory.mktemp("clicks"))


@pytest.fixture(scope="module")
def tokens(harness) -> TokenCodec:
    return TokenCodec(harness.config.signing_keys)


def rewrite(harness, tokens, source: str, *, text: str | None = None, **overrides):
    compiled, _ = instrument(
        harness.plugins,
        Document(html=source, text=text),
        tenant=harness.config.tenants["acme"],
        settings=settings_with(**overrides),
        message_id=MESSAGE,
        tracking_base_url=BASE,
        tokens=tokens,
    )
    recipient = Recipient(0, "r@example.test", tokens.issue("acme", MESSAGE, 0))
    return compiled.stamp(recipient), recipient.token


def click_url(tokens, token: str, target: str, *, in_html: bool = True) -> str:
    separator = "&amp;" if in_html else "&"
    binding = tokens.bind(MESSAGE, target)
    return f"{BASE}/t/c/{token}?u={quote(target, safe='')}{separator}s={binding}"


def expected_html(tokens, token: str, source: str) -> str:
    """The source with exactly the trackable hrefs replaced and opt-out attributes removed."""
    edits = []
    for link in links(source):
        opt_out = link.tag.get("clicktracking")
        if opt_out is not None and link.opted_out:
            start = opt_out.start
            while start > link.tag.start and source[start - 1] in " \t\r\n":
                start -= 1
            edits.append((start, opt_out.end, ""))
        elif trackable(link, BASE):
            edits.append(
                (link.href.value_start, link.href.value_end, click_url(tokens, token, link.url))
            )
    out, cursor = [], 0
    for start, end, value in sorted(edits):
        out += [source[cursor:start], value]
        cursor = end
    out.append(source[cursor:])
    return "".join(out)


def test_corpus_links_are_there():
    total = sum(
        1
        for path in CORPUS_FILES
        for link in links(path.read_text("utf-8"))
        if trackable(link, BASE)
    )
    assert total > 100


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_only_hrefs_change_and_every_http_link_is_tracked(harness, tokens, path):
    source = path.read_text("utf-8")
    stamped, token = rewrite(harness, tokens, source)
    # Every trackable link (conditional comments included) is rewritten; nothing else is.
    assert stamped["html"] == expected_html(tokens, token, source)


@pytest.mark.anyio
async def test_every_corpus_click_redirects_to_its_exact_original(tmp_path):
    harness = Harness(tmp_path)
    async with harness.serving() as client:
        tokens = harness.runtime.tokens
        checked = 0
        for path in CORPUS_FILES:
            source = path.read_text("utf-8")
            stamped, _ = rewrite(harness, tokens, source)
            targets = [link.url for link in links(source) if trackable(link, BASE)]
            tracked = [
                link.url for link in links(stamped["html"]) if link.url.startswith(f"{BASE}/t/c/")
            ]
            assert len(tracked) == len(targets), path.name
            for target, url in zip(targets, tracked, strict=True):
                response = await client.get(url.removeprefix(BASE))
                assert response.status_code == 302, (path.name, url)
                assert response.headers["Location"] == target
                checked += 1
        assert checked > 100


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("href", "location"),
    [
        ("https://example.com/?a=1&amp;b=2", "https://example.com/?a=1&b=2"),
        (
            "https://en.wikipedia.org/wiki/Bracket_(disambiguation)",
            "https://en.wikipedia.org/wiki/Bracket_(disambiguation)",
        ),
        (
            "https://example.com/@alice?email=a@b.example",
            "https://example.com/@alice?email=a@b.example",
        ),
        ("https://bücher.example/straße?q=ü", "https://xn--bcher-kva.example/stra%C3%9Fe?q=%C3%BC"),
        ("https://example.com/a b/c", "https://example.com/a b/c"),
        ("  https://example.com/trimmed  ", "https://example.com/trimmed"),
        (
            "https://example.com/p?x=%20y&z=1#section-2",
            "https://example.com/p?x=%20y&z=1#section-2",
        ),
        ("HTTPS://EXAMPLE.COM/Upper", "HTTPS://EXAMPLE.COM/Upper"),
        ("https://example.com/?q=a+b&amp;r=&#x27;c&#x27;", "https://example.com/?q=a+b&r='c'"),
        ("https://example.com/wrapped\n/path", "https://example.com/wrapped/path"),
    ],
)
async def test_tricky_urls_redirect_exactly(tmp_path, href, location):
    harness = Harness(tmp_path)
    async with harness.serving() as client:
        stamped, _ = rewrite(harness, harness.runtime.tokens, f'<a href="{href}">x</a>')
        (link,) = links(stamped["html"])
        assert link.url.startswith(f"{BASE}/t/c/")
        response = await client.get(link.url.removeprefix(BASE))
        assert response.status_code == 302
        if location.isascii() and " " not in location:
            assert response.headers["Location"] == location
        else:
            assert response.headers["Location"] in {location, location.replace(" ", "%20")}


@pytest.mark.parametrize(
    "href",
    [
        "mailto:ann@example.com",
        "tel:+15551234567",
        "sms:+15551234567",
        "#top",
        "/relative/path",
        "relative.html",
        "",
        "{{ unsubscribe_url }}",
        "https://example.com/?id={{ user.id }}",
        "*|ARCHIVE|*",
        "<%= url %>",
        "https://example.com/%customer_id%",
        f"{BASE}/t/u/sometoken",
        f"{BASE}/t/c/already?u=x",
        "javascript:alert(1)",
        "data:text/html,hi",
        "ftp://example.com/file",
    ],
)
def test_left_alone(harness, tokens, href):
    source = f'<p><a class="x" href="{href}">link</a></p>'
    stamped, _ = rewrite(harness, tokens, source)
    assert stamped["html"] == source


def test_clicktracking_off_is_honoured_and_removed(harness, tokens):
    source = '<a href="https://a.example/" clicktracking="off" class="c">a</a>'
    stamped, _ = rewrite(harness, tokens, source)
    assert stamped["html"] == '<a href="https://a.example/" class="c">a</a>'


def test_area_and_vml_inside_conditional_comments_are_tracked(harness, tokens):
    source = (
        '<!--[if mso]><v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" '
        'href="https://button.example/go" style="height:40px"><w:anchorlock/></v:roundrect>'
        "<![endif]-->"
        '<!--[if !mso]><!--><a href="https://button.example/go"><table><tr><td>Go</td></tr>'
        "</table></a><!--<![endif]-->"
        '<map><area shape="rect" href="https://map.example/area"></map>'
    )
    stamped, token = rewrite(harness, tokens, source)
    assert stamped["html"] == expected_html(tokens, token, source)
    assert stamped["html"].count(f"{BASE}/t/c/") == 3


def test_unquoted_and_single_quoted_hrefs_keep_their_quoting(harness, tokens):
    source = "<a href=https://u.example/x>u</a><a href='https://s.example/y'>s</a>"
    stamped, token = rewrite(harness, tokens, source)
    assert stamped["html"] == expected_html(tokens, token, source)
    assert "<a href=https://track" in stamped["html"]
    assert "<a href='https://track" in stamped["html"]


def test_text_part_only_with_enable_text(harness, tokens):
    text = "Read https://news.example/item?id=7. Or (https://wiki.example/A_(b)), mail a@b.c."
    off, _ = rewrite(harness, tokens, "<p></p>", text=text)
    assert off["text"] == text
    on, token = rewrite(
        harness,
        tokens,
        "<p></p>",
        text=text,
        click_tracking={"enable": True, "enable_text": True},
    )
    first = click_url(tokens, token, "https://news.example/item?id=7", in_html=False)
    second = click_url(tokens, token, "https://wiki.example/A_(b)", in_html=False)
    assert on["text"] == f"Read {first}. Or ({second}), mail a@b.c."


def test_disabled_for_one_send(harness, tokens):
    source = '<a href="https://a.example/">a</a>'
    stamped, _ = rewrite(harness, tokens, source, click_tracking={"enable": False})
    assert stamped["html"] == source


HTML_PIECES = [
    "<a ",
    "<A ",
    "href=",
    'href="',
    "href='",
    "https://x.example/",
    "http://y.example/?a=1&amp;b",
    "mailto:z@z",
    '"',
    "'",
    ">",
    "</a>",
    "<!--",
    "-->",
    "<!--[if mso]>",
    "<![endif]-->",
    "<v:roundrect ",
    "clicktracking=off ",
    "{{v}}",
    " ",
    "\n",
    "<p>",
    "é",
    "&amp;",
    "<area ",
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(HTML_PIECES), max_size=40).map("".join))
def test_arbitrary_html_never_raises_and_only_hrefs_change(harness, tokens, source):
    stamped, token = rewrite(harness, tokens, source)
    assert stamped["html"] == expected_html(tokens, token, source)


# --- through real HTTP: tampering and open redirects -------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("click-server")
    port = free_port()
    document = base_document(tmp / "data")
    document["server"]["http"] = {"host": "127.0.0.1", "port": port}
    config = tmp / "scaisend.yaml"
    config.write_text(yaml.safe_dump(document))
    key = document["server"]["signing_keys"][0]
    codec = TokenCodec([SigningKey(key["id"], key["secret"].encode())])
    with ScaisendServer("--config", str(config), port=port) as running:
        yield running.base, codec, tmp / "data"


def test_a_bound_link_redirects_through_real_http(server):
    base, codec, _ = server
    token = codec.issue("acme", MESSAGE, 0)
    target = "https://shop.example/item?id=1&x=y#frag"
    response = httpx.get(
        f"{base}/t/c/{token}",
        params={"u": target, "s": codec.bind(MESSAGE, target)},
        headers={"User-Agent": "Mail/2", "Referer": "https://webmail.example/"},
    )
    assert response.status_code == 302
    assert response.headers["location"] == target
    # Empty and sized: a client need not wait for the end of a chunked body.
    assert (response.headers["content-length"], response.content) == ("0", b"")
    assert "transfer-encoding" not in response.headers


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("forged token", 404),
        ("garbage token", 404),
        ("other destination", 400),
        ("binding of another message", 400),
        ("missing u", 400),
        ("missing s", 400),
        ("javascript scheme", 400),
        ("data scheme", 400),
    ],
)
def test_tampering_and_open_redirects_are_refused(server, case, status):
    base, codec, _ = server
    token = codec.issue("acme", MESSAGE, 0)
    target = "https://shop.example/"
    params = {"u": target, "s": codec.bind(MESSAGE, target)}
    path = f"/t/c/{token}"
    if case == "forged token":
        path = f"/t/c/{token[:-3]}{'AAA' if not token.endswith('AAA') else 'BBB'}"
    elif case == "garbage token":
        path = "/t/c/not-a-token"
    elif case == "other destination":
        params["u"] = "https://evil.example/"
    elif case == "binding of another message":
        params["s"] = codec.bind("d" * 32, target)
    elif case == "missing u":
        del params["u"]
    elif case == "missing s":
        del params["s"]
    elif case == "javascript scheme":
        params = {"u": "javascript:alert(1)", "s": codec.bind(MESSAGE, "javascript:alert(1)")}
    elif case == "data scheme":
        params = {"u": "data:text/html,x", "s": codec.bind(MESSAGE, "data:text/html,x")}
    response = httpx.get(f"{base}{path}", params=params)
    assert response.status_code == status
    assert "location" not in response.headers
    assert "error" in response.json()


@pytest.mark.anyio
async def test_click_event_carries_url_agent_ip_and_referer(tmp_path):
    harness = Harness(tmp_path)
    async with harness.serving() as client:
        tokens = harness.runtime.tokens
        token = tokens.issue("acme", MESSAGE, 4)
        target = "https://shop.example/a"
        url = f"/t/c/{token}?u={quote(target, safe='')}&s={tokens.bind(MESSAGE, target)}"
        response = await client.get(
            url, headers={"User-Agent": "Mail/3", "Referer": "https://mail.example/"}
        )
        assert response.status_code == 302
        assert harness.runtime.bus.flush()
    (event,) = EventRecord.select().where(EventRecord.type == "click")
    assert event.message_id == MESSAGE
    assert event.data["recipient_number"] == 4
    assert event.data["url"] == "https://shop.example/a"
    assert event.data["user_agent"] == "Mail/3"
    assert event.data["referer"] == "https://mail.example/"


def test_utm_parameters_land_in_the_redirect_target(harness, tokens):
    source = '<a href="https://shop.example/p?utm_source=keep&amp;a=1#top">x</a>'
    stamped, _ = rewrite(
        harness,
        tokens,
        source,
        ganalytics={
            "enable": True,
            "utm_source": "news",
            "utm_medium": "e mail",
            "utm_campaign": "april/2026",
        },
    )
    (link,) = links(stamped["html"])
    target = parse_qs(urlsplit(link.url).query)["u"][0]
    assert target == (
        "https://shop.example/p?utm_source=keep&a=1&utm_medium=e%20mail"
        "&utm_campaign=april%2F2026#top"
    )


def test_utm_on_untracked_links_only_when_the_tenant_says_so(harness, tokens):
    source = (
        '<a href="https://a.example/" clicktracking="off">a</a><a href="https://b.example/">b</a>'
    )
    utm = {"enable": True, "utm_source": "s"}
    without, _ = rewrite(harness, tokens, source, ganalytics=utm)
    assert 'href="https://a.example/"' in without["html"]
    with_untracked, _ = rewrite(
        harness, tokens, source, ganalytics={**utm, "untracked_links": True}
    )
    assert 'href="https://a.example/?utm_source=s"' in with_untracked["html"]
    clicks_off, _ = rewrite(
        harness,
        tokens,
        source,
        ganalytics={**utm, "untracked_links": True},
        click_tracking={"enable": False},
    )
    assert clicks_off["html"] == (
        '<a href="https://a.example/?utm_source=s" clicktracking="off">a</a>'
        '<a href="https://b.example/?utm_source=s">b</a>'
    )


def test_rewritten_hrefs_decode_to_the_tracked_destination(harness, tokens):
    source = '<a href="https://a.example/?x=1&amp;y=2">a</a>'
    stamped, _ = rewrite(harness, tokens, source)
    raw = re.search(r'href="([^"]+)"', stamped["html"]).group(1)
    assert "&amp;s=" in raw  # correctly encoded in the attribute
    decoded = html.unescape(raw)
    assert parse_qs(urlsplit(decoded).query)["u"] == ["https://a.example/?x=1&y=2"]


@pytest.mark.parametrize(
    ("url", "tagged"),
    [
        ("https://a.example/", "https://a.example/?utm_source=s&utm_medium=m"),
        ("https://a.example/?UTM_SOURCE=x", "https://a.example/?UTM_SOURCE=x&utm_medium=m"),
        ("https://a.example/?utm%5Fmedium=y", "https://a.example/?utm%5Fmedium=y&utm_source=s"),
        ("https://a.example/?q=utm_", "https://a.example/?q=utm_&utm_source=s&utm_medium=m"),
        (
            "https://a.example/#utm_source=f",
            "https://a.example/?utm_source=s&utm_medium=m#utm_source=f",
        ),
    ],
)
def test_utm_parameters_a_link_already_has_are_kept_however_written(url, tagged):
    tag = utm_tagger({"utm_source": "s", "utm_medium": "m"})
    assert tag(url) == tagged
