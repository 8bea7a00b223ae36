"""Why a delivery failed: the reason taxonomy and the rules that pick a reason.

A few enhanced status codes say it all (RFC 3463 X.2.2 is a full mailbox whatever the words).
Otherwise the diagnostic's wording decides, checked against phrase classes in a fixed order
(MTAs agree far more on how they phrase a failure than on which code they attach to it), then
the SMTP command the reply answered refines it, and the code's subject and detail decide when
no phrase is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

REASONS: Final[tuple[str, ...]] = (
    "userunknown",  # the mailbox does not exist
    "hostunknown",  # the recipient domain does not exist or has no mail server
    "mailboxfull",  # over quota
    "hasmoved",  # the mailbox moved; no forwarding
    "suspend",  # the mailbox exists but is disabled or inactive
    "filtered",  # refused by the recipient's own rules, or the mailbox is not accepting mail
    "blocked",  # the sending host or IP address is refused (blocklist, reputation)
    "rejected",  # the envelope sender is refused
    "spamdetected",  # the content was judged to be spam
    "virusdetected",  # the content carries malware
    "policyviolation",  # a site policy forbids the message
    "securityerror",  # authentication or encryption was required or wrong
    "authfailure",  # SPF, DKIM or DMARC failed
    "requireptr",  # the sending IP address has no reverse DNS
    "failedstarttls",  # TLS could not be negotiated
    "notcompliantrfc",  # the message breaks the message format standards
    "badreputation",  # the sending domain or IP address has a poor reputation
    "toomanyconn",  # too many connections or recipients
    "speeding",  # sending rate limited
    "exceedlimit",  # the message exceeds a recipient's size limit
    "mesgtoobig",  # the message exceeds the server's size limit
    "systemfull",  # the receiving system is out of disk space
    "systemerror",  # the receiving system failed
    "mailererror",  # a local delivery program failed
    "networkerror",  # a DNS, routing or connection problem
    "norelaying",  # the server refuses to relay
    "notaccept",  # the domain accepts no mail at all (null MX)
    "expired",  # delivery was attempted until the queue lifetime ran out
    "onhold",  # the failure could not be decided yet
    "syntaxerror",  # an SMTP command was malformed
    "contenterror",  # the content (encoding, headers) was refused
    "feedback",  # a complaint (ARF or a vendor feedback report)
    "vacation",  # an automatic reply
    "delivered",  # a success notice
    "undefined",  # nothing better is known
)

HARD_REASONS: Final[frozenset[str]] = frozenset(
    {"userunknown", "hostunknown", "hasmoved", "notaccept"}
)


_QUANTIFIERS = frozenset("?*+{")
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 -:/'<>,;=@#_%&!\"")


def _plain(char: str) -> bool:
    """A character that stands for itself in a pattern (non-ASCII letters included)."""
    return char in _PLAIN or (char > "\x7f" and char.isalnum())


def _closing(phrase: str, start: int) -> int:
    """The index of the parenthesis closing the group opened at ``start``."""
    depth = 0
    i = start
    while i < len(phrase):
        char = phrase[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            close = phrase.find("]", i + 2)
            i = close + 1 if close > 0 else len(phrase)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(phrase)


def _anchors(phrase: str) -> tuple[str, ...] | None:
    """Literal text every match of ``phrase`` contains one of, or None when it has none worth
    checking. Read off the pattern's top level, where nothing is optional: the longest run of
    literal characters, or a group of literal alternatives (``(?:user|mailbox)``)."""
    options: list[tuple[str, ...]] = []
    run: list[str] = []
    i = 0
    while i < len(phrase):
        char = phrase[i]
        width = 2 if char == "\\" else 1
        if char == "(":
            width = _closing(phrase, i) - i + 1
        elif char in "[{":
            close = phrase.find("]" if char == "[" else "}", i + 2)
            width = (close - i + 1) if close > 0 else len(phrase) - i
        quantified = i + width < len(phrase) and phrase[i + width] in _QUANTIFIERS
        if char == "|":
            return None
        if char == "\\" and i + 1 < len(phrase) and not phrase[i + 1].isalnum():
            literal: str | None = phrase[i + 1]
        elif _plain(char):
            literal = char
        else:
            literal = None
        if literal is not None and not quantified:
            run.append(literal)
        else:
            options.append(("".join(run),))
            run = []
            if char == "(" and not quantified:
                group = _literal_alternatives(phrase[i + 1 : i + width - 1])
                if group:
                    options.append(group)
        i += width
    options.append(("".join(run),))
    usable = [o for o in options if min(len(a) for a in o) >= 3]
    if not usable:
        return None
    return max(usable, key=lambda o: (min(len(a) for a in o), -len(o)))


def _literal_alternatives(body: str) -> tuple[str, ...] | None:
    """``?:a|b|c`` where each alternative is plain text: the alternatives."""
    if not body.startswith("?:"):
        return None
    alternatives = tuple(body[2:].split("|"))
    if all(a and all(_plain(c) for c in a) for a in alternatives):
        return alternatives
    return None


@dataclass(frozen=True)
class Phrases:
    """One reason's phrases, compiled together, with a cheap test that rules most text out."""

    pattern: re.Pattern[str]
    anchors: tuple[str, ...] | None
    """Literal text each phrase's matches contain; None when some phrase offers none."""

    def search(self, text: str) -> bool:
        if self.anchors is not None and not any(a in text for a in self.anchors):
            return False
        return self.pattern.search(text) is not None


def _rx(*phrases: str) -> Phrases:
    # matched against lower-cased text: case-insensitive matching is several times slower
    found = [_anchors(p) for p in phrases]
    return Phrases(
        pattern=re.compile("|".join(f"(?:{p})" for p in phrases)),
        anchors=None
        if any(a is None for a in found)
        else tuple(dict.fromkeys(x for a in found if a is not None for x in a)),
    )


# Checked in order: the more specific wordings come before the ones they would otherwise match
# (a "mailbox full" message often also says "user", a blocklist message often says "rejected").
PHRASES: Final[tuple[tuple[str, Phrases], ...]] = (
    (
        "notcompliantrfc",
        _rx(
            r"rfc ?(?:2822|5322|822|5321)\b.{0,20}(?:compliant|complian|standard|violat)",
            r"not (?:rfc ?\d*|standards?)[ -]?compliant",
            r"malformed (?:header|message)",
            r"(?:duplicate|multiple|missing) .{0,40}headers?\b",
            r"multiple addresses in from",
            r"header (?:is )?(?:invalid|malformed|missing)",
            r"message (?:is )?(?:not|non)[ -]compliant",
        ),
    ),
    ("contenterror", _rx(r"8-?bit data", r"improper use of 8")),
    ("onhold", _rx(r"\bon hold\b")),
    (
        "mailererror",
        _rx(
            r"mailer error",
            r"command (?:died|failed|terminated)",
            r"\bprocmail\b",
            r"pipe to \|",
            r"delivery to (?:a )?(?:program|pipe|command)",
            r"(?:program|command) (?:failed|exited)",
        ),
    ),
    ("badreputation", _rx(r"(?:low|poor|bad|negative) (?:sender )?reputation")),
    (
        "securityerror",
        _rx(
            r"smtp authentication",
            r"without authentication",
            r"authentication (?:is )?required",
            r"must authenticate",
            r"(?:tls|ssl|encryption) (?:is )?required",
            r"must (?:use|issue a) starttls",
            r"required authentication level",
            r"authentication requirements",
            r"not authenticated to send",
        ),
    ),
    (
        "authfailure",
        _rx(
            r"\bspf\b(?!\s+records?).{0,40}\b(?:fail|check|validation|hard)",
            r"\bdmarc\b.{0,60}(?:fail|polic|reject)",
            r"\bdkim\b(?!-signature).{0,40}(?:fail|invalid|signature)",
            r"sender policy framework",
            r"authentication (?:information|check|checks) ",
            r"authentication checks? fail",
            r"unauthenticated email",
            r"not authorized to send on behalf",
            r"\bspf (?:softfail|neutral)",
            r"bad spf",
            r"(?:per|by) (?:its|it.s|the) spf",
        ),
    ),
    (
        "requireptr",
        _rx(
            r"reverse (?:dns|lookup|name)",
            r"\bptr\b.{0,30}(?:record|lookup|missing|required|fail)",
            r"no ptr",
            r"(?:client|ip|host) (?:name )?(?:has no|without|lacks).{0,20}(?:ptr|hostname|rdns"
            r"|dns)",
            r"\brdns\b",
            r"cannot find your hostname",
            r"unresolvable (?:client )?(?:hostname|address)",
            r"hostname (?:does not|doesn.t) (?:resolve|match)",
            r"not resolve to your (?:ip|address)",
            r"helo.{0,40}(?:does not|doesn.t) (?:resolve|match)",
            r"unknown client host",
            r"client host rejected: cannot find",
            r"mismatch(?:es)? (?:the )?(?:client )?ip",
            r"unverif(?:y|i)able (?:sending )?ip",
        ),
    ),
    (
        "policyviolation",
        _rx(
            r"(?:for|due to) (?:local |security |site )?polic(?:y|ies)(?: reasons)?",
            r"security polic",
            r"policy violation",
            r"protocol violation",
            r"(?:illegal|prohibited|forbidden|unacceptable) attachment",
            r"message (?:was |has been )?blocked",
            r"attachment.{0,40}(?:not allowed|prohibited|blocked|rejected)",
        ),
    ),
    (
        "virusdetected",
        _rx(
            r"virus (?:found|detected|infected|alert)",
            r"contains? (?:a )?virus",
            r"malware",
            r"infected",
            r"trojan",
            r"malicious (?:content|attachment)",
        ),
    ),
    (
        "hasmoved",
        _rx(r"has (?:been )?moved", r"user has moved", r"address changed"),
    ),
    (
        "exceedlimit",
        _rx(
            r"message (?:length )?exceeds administrative limit",
            r"exceeds (?:recipient|the recipient.s) .{0,20}size limit",
            r"too large for this recipient",
            r"recipsizelimit",
        ),
    ),
    (
        "mesgtoobig",
        _rx(
            r"message (?:size )?(?:is )?too (?:big|large|long)",
            r"message (?:size|length) exceeds",
            r"size (?:exceeds|over) .{0,40}(?:limit|maximum)",
            r"exceeds (?:the )?(?:maximum|max) (?:allowed )?(?:message )?size",
            r"message file too big",
            r"too large for this (?:system|server|site)",
            r"size limit exceeded",
            r"size of (?:the )?message exceeds",
            r"message size limit",
            r"mail too large",
            r"line limit exceeded",
            r"line too long",
        ),
    ),
    (
        "systemfull",
        _rx(
            r"system (?:is )?full",
            r"mail system full",
            r"insufficient (?:system |disk )(?:space|storage)",
            r"too many messages in queue",
        ),
    ),
    (
        "mailboxfull",
        _rx(
            r"mailbox (?:is )?(?:full|over ?quota|size limit)",
            r"over ?quota",
            r"quota (?:exceeded|exceed|full|limit|violation)",
            r"exceeded (?:the |his |her |its )?(?:storage |mailbox )?(?:quota|allocation|storage)",
            r"(?:mail ?box|inbox|mail folder|account) (?:is |has )?(?:full|exceeded|reached)",
            r"(?:storage|disk) quota",
            r"not enough (?:storage|space)",
            r"insufficient (?:space|storage)",
            r"user.{0,20} over (?:the )?(?:quota|limit)",
            r"full mailbox",
            r"mailfolder is full",
            r"too many messages in (?:this|the) mailbox",
            r"mailbox exceeds allowed size",
            r"would exceed (?:the )?(?:mailbox|quota)",
            r"exceeds? (?:size limit|quota)",
            r"out of (?:storage|space)",
            r"mailbox full",
            r"(?:postfach|mailbox) (?:ist )?voll",
            r"bo[iî]te (?:aux lettres )?(?:est )?pleine",
            r"buz[oó]n (?:est[aá] )?lleno",
            r"casella (?:di posta )?piena",
            r"容量オーバー",
            r"容量超過",
            r"容量が不足",
        ),
    ),
    (
        "norelaying",
        _rx(
            r"\brelay(?:ing)?\b(?: access)?.{0,30}(?:denied|not permitted|not allowed|prohibited"
            r"|refused)",
            r"not (?:configured|permitted|allowed|authorized) to relay",
            r"unable to relay",
            r"we do not relay",
            r"no relaying",
            r"does not accept mail for that domain",
            r"(?:is )?not a gateway",
            r"not local host",
        ),
    ),
    (
        "notaccept",
        _rx(
            r"does not accept (?:any )?mail",
            r"accepts no mail",
            r"null mx",
            r"no mx record",
            r"find a mail exchanger",
            r"not accepting (?:any )?(?:network )?(?:mail|messages)",
            r"domain does not accept",
        ),
    ),
    (
        "speeding",
        _rx(
            r"sending rate",
            r"receiving mail at a rate",
            r"too (?:fast|quickly|frequent)",
            r"too many .{0,30}(?:this|per|an?) (?:hour|minute|day)",
            r"throttl",
            r"rate (?:exceeded|limited)",
        ),
    ),
    (
        "toomanyconn",
        _rx(
            r"too many (?:connections|concurrent|simultaneous|sessions|hosts)",
            r"too many recipients",
            r"connection (?:limit|rate limit) (?:exceeded|reached)",
            r"maximum (?:number of )?(?:connections|recipients)",
            r"exceeded (?:the )?(?:maximum )?(?:number of )?(?:connections|recipients)",
            r"recipient limit",
            r"reciplimit",
            r"frequency limit",
            r"too much mail",
            r"too many messages",
            r"rate limit",
        ),
    ),
    (
        "spamdetected",
        _rx(
            r"\bspam\b",
            r"junk mail",
            r"unsolicited",
            r"content (?:rejected|filter)",
            r"bulk mail",
            r"spamassassin",
            r"(?:classified|identified|detected|looks?) (?:as|like) (?:spam|junk|bulk)",
            r"rejected by (?:content|message) (?:filter|scan)",
            r"blacklisted (?:url|link)",
            r"\buribl\b",
        ),
    ),
    (
        "suspend",
        _rx(
            r"(?:account|mailbox|address|user) (?:is |has been )?(?:disabled|deactivated|suspended"
            r"|inactive|locked|frozen|expired|closed|blocked|discontinued)",
            r"(?:disabled|deactivated|suspended|inactive|locked|closed) (?:account|mailbox|user)",
            r"account (?:is )?(?:not active|unavailable|temporarily disabled)",
            r"mailbox (?:is )?(?:currently )?inactive",
            r"user (?:is )?(?:suspended|inactive|not active)",
            r"service (?:is )?(?:disabled|suspended|not available for this user)",
            r"recipient (?:address|mailbox) (?:is )?(?:disabled|suspended|inactive)",
            r"this account has been disabled",
            r"\btemporar(?:y|ily) locked",
            r"recipientdisabled",
            r"account that you tried to reach is (?:disabled|inactive)",
            r"has been (?:disabled|suspended|terminated)",
            r"no longer active",
        ),
    ),
    (
        "blocked",
        _rx(
            r"block ?list",
            r"refused to talk to me",
            r"(?:my|our) (?:host ?)?name was rejected",
            r"smtp server of your isp",
            r"not authorized to send (?:e-?mail )?directly",
            r"traffic not accepted from this ip",
            r"banned sending ip",
            r"blocked (?:ip|host|sender|by|due to|for|because of|using)",
            r"(?:(?<![?&])\bip\b(?!=)|host|connection|sender|you|your \w+|server|domain) "
            r"(?:has been |is |was |are )?(?:temporarily )?blocked",
            r"black ?list",
            r"\bdnsbl\b",
            r"\brbl\b",
            r"spamhaus",
            r"spamcop",
            r"sorbs",
            r"barracuda ?central",
            r"(?<!not )listed (?:at|on|in|by)",
            r"(?:(?<![?&])\bip\b(?!=)|ip address|host|network|client).{0,30}(?:is )?"
            r"(?:banned|blacklisted|denied|refused|rejected|not allowed)",
            r"access denied.{0,40}(?:(?<![?&])\bip\b(?!=)|banned|rbl)",
            r"connection refused",
            r"not allowed to send (?:mail )?from",
            r"(?:refused|rejected) (?:due to|because of) .{0,30}"
            r"(?:(?<![?&])\bip\b(?!=)|reputation)",
            r"client host .{0,60}rejected",
            r"your (?:ip|server|host|network)\b",
            r"invalid ip",
            r"dynamic (?:ip|address|pool)",
            r"residential",
            r"too many (?:errors|invalid)",
            r"\bdial-?up\b",
        ),
    ),
    (
        "hostunknown",
        _rx(
            r"(?:^|[\s:<\[])[a-z0-9-]+(?:\.[a-z0-9-]+)+\.?>?\]?:?\s+does not exist",
            r"host (?:or domain name )?not found",
            r"host \S+ not found",
            r"(?:domain|host)(?: name)? (?:is )?(?:unknown|not found|does not exist|invalid|not"
            r" reachable)",
            r"unknown (?:domain|host)",
            r"name or service not known",
            r"no such (?:domain|host)",
            r"\bnxdomain\b",
            r"unroutable (?:domain|address)",
            r"unrouteable (?:mail )?(?:domain|address)",
            r"domain (?:name )?(?:lookup|resolution) fail",
            r"recipient domain .{0,30}(?:invalid|unknown|not found)",
            r"domain .{0,40} does not exist",
            r"hostname lookup fail",
        ),
    ),
    (
        "userunknown",
        _rx(
            r"user(?:name)? (?:is )?unknown",
            r"unknown (?:user|recipient|mailbox|local|address|account)",
            r"no such (?:user|mailbox|recipient|account|address|person|local user)",
            r"(?:user|mailbox|recipient|address|account|addressee)(?: name)? (?:does not|doesn.t"
            r"|did not) exist",
            r"does not exist",
            r"(?:user|mailbox|recipient|address|account)\b.{0,40}not (?:found|exist|known|valid"
            r"|listed)",
            r"not (?:a )?(?:valid|known) (?:user|recipient|mailbox|address)",
            r"invalid (?:recipient|mailbox|user|address|account)",
            r"user not found",
            r"recipient not found",
            r"mailbox (?:not found|unavailable|does not exist|is unavailable)",
            r"(?:recipient )?address rejected",
            r"recipient rejected",
            r"address couldn.t be found",
            r"undeliverable address",
            r"no mailbox",
            r"not our customer",
            r"no valid recipients",
            r"bad destination mailbox",
            r"unknown or illegal alias",
            r"unknown in (?:local|virtual|relay)",
            r"not listed in",
            r"address (?:lookup )?fail",
            r"there is no one at this address",
            r"no such (?:e-?mail )?address",
            r"is not a valid mailbox",
            r"doesn.t have a .{0,40}account",
            r"user doesn.t have",
            r"destination address (?:invalid|unknown)",
            r"recipient (?:address )?(?:is )?invalid",
            r"unknown (?:e-?mail )?address",
            r"no account by that name",
            r"mailbox name not allowed",
            r"check if address is correct",
            # the same in the languages notices most often come in
            r"(?:benutzer|empfänger|empfaenger) unbekannt",
            r"unbekannte[rn]? (?:benutzer|empfänger|adresse)",
            r"(?:utilisateur|destinataire|adresse) inconnue?",
            r"(?:usuario|destinatario) desconocido",
            r"utente sconosciuto",
            r"(?:宛先|ユーザ|アドレス)[^。\n]{0,12}(?:存在しません|見つかりません)",
            r"recip(?:ient)?notfound",
            r"addressee unknown",
            r"not a known user",
            r"no mailbox here by that name",
            r"unknown local[ -]part",
            r"mailbox not found",
        ),
    ),
    (
        "networkerror",
        _rx(
            r"connection (?:reset|refused|closed|dropped|lost)",
            r"(?:unable|not able|wasn.t able|failed) to (?:establish|open|make) (?:an? )?(?:smtp"
            r" )?connection",
            r"could not connect",
            r"unable to connect",
            r"network (?:is )?(?:unreachable|error)",
            r"no route to host",
            r"mail (?:for .{0,60})?loops? back",
            r"routing loop",
            r"too many hops",
            r"mail loop",
            r"loop detected",
            r"temporary (?:dns|lookup) failure",
            r"name service error",
            r"unexpected name server reply",
            r"dns error",
            r"host name lookup failure",
            r"host is unreachable",
            r"lost connection",
            r"broken pipe",
        ),
    ),
    (
        "expired",
        _rx(
            r"retry time(?:out)? (?:not reached|exceeded)",
            r"failing for a long time",
            r"retry timeout",
            r"connection timed? ?out",
            r"will be retried",
            r"requests to connect",
            r"envelope expired",
            r"failed \d+ attempts",
            r"delivery (?:time|period) expired",
            r"(?:message|delivery) (?:has )?expired",
            r"(?:could not|couldn.t|unable to) (?:be )?deliver.{0,60}(?:for|within|after) .{0,20}"
            r"(?:days|hours)",
            r"too long in (?:the )?queue",
            r"queue(?:d)? too long",
            r"(?:been|remained|was) (?:in the )?(?:queued?|undeliver\w*) (?:for )?(?:more than|over"
            r"|too long)",
            r"give up",
            r"gave up",
            r"giving up",
            r"retry (?:timeout|limit)",
            r"has not been delivered .{0,40} (?:days|hours)",
            r"timed? ?out.{0,40}(?:queue|days)",
            r"lifetime exceeded",
            r"maximum (?:queue )?time",
            r"not yet been delivered",
            r"will continue trying",
        ),
    ),
    (
        "rejected",
        _rx(
            r"sender (?:address )?(?:rejected|denied|refused|unknown|invalid|blocked|not (?:allowed"
            r"|accepted|permitted))",
            r"(?:\bfrom|mail from|envelope sender|return path) .{0,30}(?:rejected|refused|invalid"
            r"|not allowed)",
            r"domain of sender address",
            r"sender domain",
            r"sender verify fail",
            r"(?:invalid|bad|unknown) sender",
            r"address verification failed",
            r"your (?:email )?address .{0,40} (?:rejected|blocked)",
            r"not accept mail from",
            r"(?:may not|do not|don.t) have permission to (?:post|send)",
        ),
    ),
    (
        "securityerror",
        _rx(
            r"authentication failed",
            r"not authorized",
            r"unauthori[sz]ed",
            r"password",
            r"certificate",
        ),
    ),
    (
        "failedstarttls",
        _rx(r"starttls (?:failed|negotiation)", r"tls (?:negotiation|handshake) fail"),
    ),
    (
        "policyviolation",
        _rx(
            r"polic(?:y|ies)",
            r"prohibited",
            r"not permitted",
            r"content (?:not allowed|violat)",
        ),
    ),
    (
        "filtered",
        _rx(
            r"(?:recipient|user|mailbox) .{0,30}(?:refuses?|rejects?|does not accept|not"
            r" accepting)",
            r"(?:refused|rejected) by (?:the )?(?:recipient|user)",
            r"recipient preferences",
            r"filter",
            r"not accepting (?:your )?(?:mail|messages)",
            r"denied by (?:the )?(?:recipient|user)",
            r"delivery (?:is )?not authorized",
            r"user.{0,40}(?:has )?restrict",
            r"recipient (?:is )?(?:not allowed|restricted)",
        ),
    ),
    (
        "syntaxerror",
        _rx(
            r"syntax error",
            r"command (?:not recognized|unrecognized)",
            r"bad (?:command|sequence)",
            r"unrecognized command",
        ),
    ),
    (
        "contenterror",
        _rx(
            r"content (?:error|type)",
            r"(?:invalid|illegal|bad|unsupported) (?:character|encoding|mime|charset)",
            r"media error",
            r"message (?:body|content) (?:is )?(?:invalid|rejected)",
        ),
    ),
    (
        "systemerror",
        _rx(
            r"system (?:error|failure|problem)",
            r"internal (?:server )?error",
            r"server (?:error|configuration)",
            r"local (?:error|problem)",
            r"misconfigur",
            r"configuration error",
            r"service (?:is )?(?:currently |temporarily )?(?:not available|unavailable)",
            r"resources temporarily",
            r"i/o error",
            r"write error",
            r"database (?:error|failure)",
            r"transaction failed",
            r"unable to contact",
        ),
    ),
)

# RFC 3463 subject.detail, where the code alone says what happened.
_BY_STATUS: Final[dict[str, str]] = {
    "1.1": "userunknown",
    "1.2": "hostunknown",
    "1.3": "userunknown",
    "1.4": "userunknown",
    "1.5": "userunknown",
    "1.6": "hasmoved",
    "1.7": "rejected",
    "1.8": "rejected",
    "1.10": "userunknown",
    "2.1": "suspend",
    "2.2": "mailboxfull",
    "2.3": "exceedlimit",
    "2.4": "systemerror",
    "3.0": "systemerror",
    "3.1": "systemfull",
    "3.2": "notaccept",
    "3.3": "systemerror",
    "3.4": "mesgtoobig",
    "3.5": "systemerror",
    "4.0": "networkerror",
    "4.1": "networkerror",
    "4.2": "networkerror",
    "4.3": "systemerror",
    "4.4": "hostunknown",
    "4.5": "networkerror",
    "4.6": "networkerror",
    "4.7": "expired",
    "5.0": "syntaxerror",
    "5.1": "syntaxerror",
    "5.2": "syntaxerror",
    "5.3": "toomanyconn",
    "5.4": "syntaxerror",
    "5.5": "syntaxerror",
    "6.0": "contenterror",
    "6.1": "contenterror",
    "6.2": "contenterror",
    "6.3": "contenterror",
    "6.4": "contenterror",
    "6.5": "contenterror",
    "7.0": "securityerror",
    "7.1": "rejected",
    "7.2": "systemerror",
    "7.3": "securityerror",
    "7.4": "securityerror",
    "7.5": "securityerror",
    "7.6": "securityerror",
    "7.7": "securityerror",
    "7.8": "securityerror",
    "7.9": "securityerror",
    "7.13": "suspend",
    "7.23": "authfailure",
    "7.24": "authfailure",
    "7.25": "requireptr",
    "7.26": "authfailure",
    "7.27": "notaccept",
    "7.509": "authfailure",
}


# Codes precise enough that no wording overrides them.
_DECISIVE: Final[frozenset[str]] = frozenset(
    {"1.2", "1.6", "1.8", "2.2", "2.3", "3.4", "7.25", "7.26", "7.509"}
)
_COMMAND: Final = re.compile(
    r"(?:(?:\b(?:after|in reply to|reply to|during|for|our)|>>>|\bin:)\s+(?:the\s+)?"
    r"(rcpt|mail(?= from)|data|end of data|helo|ehlo|starttls)\b)"
    r"|\b(rcpt|mail from|data|helo|ehlo)(?: to)? command"
    r"|smtp command:?\s+(rcpt|mail|data)\b",
)


_SMTP_REPLY: Final = re.compile(r"(?<![\d.])5[0-5]\d(?![\d.])")
_TIMED_OUT: Final = re.compile(r"timed? ?out")


_REJECTED_BECAUSE: Final = re.compile(r"recipient address rejected: ?(?=\S)")


def smtp_command(text: str) -> str | None:
    """The SMTP command a diagnostic says the reply answered (the last one it names)."""
    found = None
    for match in _COMMAND.finditer(text.lower()):
        found = match.group(1) or match.group(2) or match.group(3)
    if found is None:
        return None
    word = found.split()[0].upper()
    return "DATA" if word == "END" else word


def classify(
    diagnostic: str | None,
    status: str | None,
    *,
    action: str | None = None,
) -> str:
    """The reason for one failed recipient, from its diagnostic text and enhanced status code."""
    text = " ".join(diagnostic.lower().split()) if diagnostic else ""
    detail = status.partition(".")[2] if status else ""
    if detail in _DECISIVE:
        return _BY_STATUS[detail]
    reason = _by_phrase(text)
    said = _REJECTED_BECAUSE.search(text)
    if said is not None and reason == "userunknown":
        # "Recipient address rejected: <why>": the why is what tells the reason
        reason = _by_phrase(text[said.end() :])
        if reason == "undefined":
            reason = "userunknown"
    command = smtp_command(text) if text else None
    if (
        reason == "userunknown"
        and not detail.startswith("1.")
        and command != "RCPT"
        and (
            command == "DATA"
            or detail.startswith("2.")
            or (status is None and _SMTP_REPLY.search(text) is not None)
        )
    ):
        # an unknown-user answer given to the message body, or by a server that named no
        # command and gave no code about the address, comes from a filter: the address itself
        # was not what it judged
        reason = "filtered"
    if command == "MAIL" and reason in ("undefined", "userunknown", "hostunknown"):
        # an answer to MAIL FROM is about the sender, whatever address it names
        reason = "rejected"
    if reason == "hostunknown" and status is not None and status.startswith("4"):
        # a name lookup that failed only for now is a network problem, not an unknown host
        reason = "networkerror"
    if reason == "undefined" and status:
        reason = _BY_STATUS.get(detail, "undefined")
        if reason == "undefined" and detail.startswith("4."):
            reason = "expired"
    temporary = status is not None and status.startswith("4")
    if action == "failed" and (
        (temporary and reason == "undefined")
        or (reason == "networkerror" and _TIMED_OUT.search(text) is not None)
    ):
        # a temporary failure reported as final, or connections that kept timing out: the
        # queue lifetime ran out
        reason = "expired"
    return reason


def _by_phrase(text: str) -> str:
    if text:
        for reason, phrases in PHRASES:
            if phrases.search(text):
                return reason
    return "undefined"


def is_hard(reason: str, status: str | None) -> bool:
    """Whether a final failure is permanent enough to suppress the address: the mailbox or
    domain is gone whatever the reply class; a domain refusing mail only when it says so for
    good."""
    if reason == "notaccept":
        return not (status and status.startswith("4"))
    return reason in HARD_REASONS
