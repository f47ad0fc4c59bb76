"""Every parser that reads outside input, as a fuzz target: real seed inputs, the call, and the one
exception the parser documents for garbage. Anything else it raises is a crash.

Seeds are real formats (Suricata EVE, Snort 3 alert_json, fast lines, RFC 5424/3164 syslog, Postfix
3.7 policy requests, MTA log lines, the shipped remediation list, the contracts' own examples); the
engine mutates them and also feeds raw bytes.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import pydantic

from detector_smtp.maillog import parser_for
from detector_smtp.postfix_policy import PolicyProtocolError, parse_request
from detector_snort.parsers import (
    ParseError,
    parse_eve_line,
    parse_fast_line,
    parse_snort3_json_line,
    parse_syslog,
)
from lazaretto_core import remediation
from lazaretto_core.contracts import ALL_CONTRACTS, Contract
from lazaretto_core.remediation import load_remediation, shipped
from lazaretto_core.settings import ServiceSettings, SettingsInvalid
from policy.reports import ReportInvalid, parse_report
from policy.rulebook import RulesError
from policy.rulebook import parse as parse_rules

NOW = datetime(2025, 6, 1, tzinfo=UTC)
# A value the settings parser must never quote back in its error (it may be a secret).
CANARY = "Zq9canaryX7"


@dataclass(frozen=True)
class Target:
    """`parse` is called with one input; raising one of `rejects` is the documented refusal."""

    name: str
    parse: Callable[[bytes], object]
    rejects: tuple[type[BaseException], ...]
    seeds: tuple[bytes, ...]
    # Extra dictionary words for the mutator (format tokens a random byte rarely finds).
    tokens: tuple[bytes, ...] = ()
    json_seeds: bool = False
    meta: dict[str, object] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- detector-snort

EVE = {
    "timestamp": "2025-01-15T10:00:00.219498+0000",
    "flow_id": 1234,
    "in_iface": "eth0",
    "event_type": "alert",
    "src_ip": "100.64.1.10",
    "src_port": 55000,
    "dest_ip": "198.51.100.7",
    "dest_port": 39,
    "proto": "TCP",
    "app_proto": "http",
    "alert": {
        "action": "allowed",
        "gid": 1,
        "signature_id": 9000001,
        "rev": 1,
        "signature": "LAB SCAN subscriber TCP SYN port scan",
        "category": "Attempted Information Leak",
        "severity": 2,
    },
    "flow": {"pkts_toserver": 1, "start": "2025-01-15T10:00:00.219498+0000"},
}
SNORT3 = {
    "seconds": 1736935200,
    "timestamp": "01/15-10:00:00.219498",
    "pkt_num": 7,
    "proto": "TCP",
    "pkt_gen": "raw",
    "pkt_len": 60,
    "dir": "C2S",
    "src_ap": "100.64.1.10:55000",
    "dst_ap": "198.51.100.7:39",
    "rule": "1:9000001:1",
    "action": "allow",
    "msg": "LAB SCAN subscriber TCP SYN port scan",
    "class": "Attempted Information Leak",
    "priority": 2,
}
FAST_LINES = (
    b"01/15/2025-10:00:00.219498  [**] [1:9000001:1] LAB SCAN subscriber TCP SYN port scan [**] "
    b"[Classification: Attempted Information Leak] [Priority: 2] {TCP} 100.64.1.10:55000 -> 198.51.100.7:39",
    b"01/15-10:00:00.219498  [**] [1:2100498:7] GPL ATTACK_RESPONSE id check returned root [**] "
    b"[Classification: Potentially Bad Traffic] [Priority: 2] {UDP} 2001:db8:100::9:53 -> 2001:db8::1:5353",
    b"25/01/15-10:00:00.219498 [drop] [**] [1:498:7] x [**] [Priority: 1] {ICMP} 100.64.1.10 -> 8.8.8.8",
)
SYSLOG_5424 = (
    b"<13>1 2025-01-15T10:00:00.219Z ids-1 snort 4242 - - [1:9000001:1] LAB SCAN [Classification: "
    b"Attempted Information Leak] [Priority: 2] {TCP} 100.64.1.10:55000 -> 198.51.100.7:39",
    b'<13>1 2025-01-15T10:00:00+01:00 ids-1 suricata - - [meta@32473 a="b\\"]"] ' + json.dumps(EVE).encode(),
)
SYSLOG_3164 = (
    b"<33>Jan 15 10:00:00 ids-1 snort[4242]: [1:9000001:1] LAB SCAN [Classification: Attempted "
    b"Information Leak] [Priority: 2] {TCP} 100.64.1.10:55000 -> 198.51.100.7:39",
    b"<14>Jan  5 10:00:00 ids-1 suricata[1]: " + json.dumps(EVE).encode(),
)
IDS_TOKENS = (
    b"[**]",
    b"[1:1:1]",
    b"{TCP}",
    b"{ICMP}",
    b" -> ",
    b":65536",
    b"::ffff:100.64.0.1",
    b"fe80::1%eth0",
    b"[Priority: 99999999999999999999]",
    b"<191>",
    b"<999>1 ",
    b" - - ",
    b'[x@1 a="\\]"]',
    b"Feb 29 ",
    b"2025-13-40T25:61:61Z",
    b"-00:00",
    b'"\\ud800"',
    b"1e400",
    b"-1",
    b"null",
)


def _fast(layout: str) -> Callable[[bytes], object]:
    return lambda data: parse_fast_line(data, layout=layout, now=NOW)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- detector-smtp

POLICY_REQUEST = b"""request=smtpd_access_policy
protocol_state=RCPT
protocol_name=ESMTP
client_address=100.64.2.20
client_name=cpe-100-64-2-20.dyn.isp.example
client_port=53916
reverse_client_name=cpe-100-64-2-20.dyn.isp.example
server_address=127.0.0.1
server_port=2525
helo_name=infected-pc
sender=a@spam.example
recipient=v1@example.org
recipient_count=0
queue_id=
instance=7e27.6b07ae55.a3c3.0
size=0
sasl_method=
sasl_username=
ccert_subject=
encryption_protocol=
"""
POLICY_DATA = POLICY_REQUEST.replace(b"RCPT", b"END-OF-MESSAGE").replace(
    b"recipient_count=0", b"recipient_count=3"
)


def _policy(data: bytes) -> object:
    request = parse_request(data)
    # Everything the detector reads of a request, so a property that cannot take the value shows.
    return (
        request.protocol_state,
        request.client_address,
        request.recipient_count,
        request.size,
        request.sender,
        request.recipient,
        request.sasl_username,
        request.instance,
    )


POSTFIX_LOG = (
    b"Nov 26 03:58:13 mx-lab postfix/smtpd[32295]: connect from cpe-100-64-2-20.dyn.isp.example[100.64.2.20]",
    b"Nov 26 03:58:13 mx-lab postfix/smtpd[32295]: 0A72F218700: client=cpe.isp.example[100.64.2.20]",
    b"Nov 26 03:58:13 mx-lab postfix/qmgr[32285]: 0A72F218700: from=<a@spam.example>, size=423, nrcpt=3 "
    b"(queue active)",
    b"Nov 26 03:58:15 mx-lab postfix/smtpd[32295]: NOQUEUE: reject: RCPT from cpe.isp.example[100.64.2.21]: "
    b"554 5.7.1 <user5@example.org>: Recipient address rejected; from=<n@bulk.example> "
    b"to=<user5@example.org> proto=ESMTP helo=<win10-pc>",
    b"Nov 26 04:00:00 mx postfix/submission/smtpd[77]: 1B2C3D4E5F: client=unknown[2001:db8::7], "
    b"sasl_method=PLAIN, sasl_username=joe",
)
SENDMAIL_LOG = (
    b"Feb  6 12:14:43 localhost sendmail[65623]: g16HEgs9065623: from=<USER.ACCT@myhost.example>, size=5, "
    b"class=0, nrcpts=1, msgid=<2002@myhost.example>, proto=ESMTP, daemon=MTA, relay=localhost [127.0.0.1]",
    b"Feb 25 03:01:10 kismet sm-acceptingconnections[27713]: s1P819mk027713: ruleset=check_rcpt, "
    b"arg1=<a@freemailhost.example>, relay=h.example [128.68.136.133], reject=550 5.7.1 Relaying denied.",
    b"Nov 26 05:00:00 mx sm-mta[100]: 5AQ50000000100: from=<x@bulk.example>, size=900, class=0, nrcpts=4, "
    b"msgid=<a@b>, proto=ESMTP, daemon=MTA, relay=[IPv6:2001:db8::4]",
)
EXIM_LOG = (
    b"2016-03-25 15:06:04 1ajLoq-0001wC-Pk <= email@x.example H=mail.x.example (x.example) "
    b"[124.217.254.72]:39926 P=esmtpa A=dovecot_login:email@x.example S=964 id=f0@x.example for a@b.example",
    b"2013-06-15 16:34:55 H=mx.t.example [182.18.24.93] F=<buh@c.example> rejected RCPT <r@m.example>: "
    b"Sender verify failed",
    b"2011-03-08 10:29:45 SMTP connection from (helo) [100.64.1.2]:51234 I=[10.0.0.1]:25 "
    b"(TCP/IP connection count = 1)",
    b"Mar  8 10:29:44 mail exim[11721]: 2011-03-08 10:29:44 1Pwzn4-0002xx-Aa <= a@b.example H=(x) "
    b"[100.64.1.2] P=esmtp S=100 for a@x.org b@y.org",
)
MAIL_TOKENS = (
    b"client=",
    b"[100.64.0.1]",
    b"[IPv6:::1]",
    b" from=<",
    b"nrcpt=",
    b"nrcpts=99999999999999999999999",
    b" <= ",
    b" H=",
    b" for ",
    b"relay=",
    b"reject=",
    b"request=smtpd_access_policy\n",
    b"recipient_count=\xd9\xa3",
    b"size=-1",
    b"\r\n",
    b"=",
)


def _maillog(fmt: str) -> Callable[[bytes], object]:
    # One parser per target, kept across inputs: its queue-id join table is state a hostile log feeds.
    parser = parser_for(fmt)
    return lambda line: parser.parse(line, 0.0)


# ----------------------------------------------------------------------------------- lazaretto-core


def _contract(contract: type[Contract]) -> Target:
    return Target(
        name=f"contract:{contract.routing_key}",
        parse=contract.read,
        rejects=(pydantic.ValidationError,),
        seeds=tuple(json.dumps(example).encode() for example in contract.examples),
        tokens=(b'"', b"null", b"1e999", b"-0", b'"\\u0000"', b"[]", b"{}", b'"::ffff:1.2.3.4"', b"true"),
        json_seeds=True,
    )


# The shipped list is the project's own file, parsed once per process in the fuzz run (it takes 40 ms):
# inputs go to the operator's file, the part an outsider writes.
remediation.shipped = functools.cache(remediation.shipped)
_SCRATCH = Path(tempfile.mkdtemp(prefix="lazaretto-fuzz-"))
atexit.register(shutil.rmtree, _SCRATCH, True)


def _remediation(data: bytes) -> object:
    # The operator's file, read from disk as the services read it.
    path = _SCRATCH / "remediation.yaml"
    path.write_bytes(data)
    return load_remediation(path)


def _remediation_seeds() -> tuple[bytes, ...]:
    base = shipped()
    return (
        b"version: isp-1\nentries:\n  - name: billing.isp.example\n    purpose: isp\n    label: Billing\n"
        b"    link: https://billing.isp.example/pay\n    networks: [203.0.113.0/28]\n",
        b"version: x\nentries: []\n",
        json.dumps(base.model_dump(mode="json")).encode(),
    )


REMEDIATION_TOKENS = (
    b"*.",
    b"purpose: time\n",
    b"link: http://",
    b"networks: [0.0.0.0/0]",
    b"!!python/object:os.system",
    b"&a [*a, *a]",
    b"\t",
    b"- ",
    b": ",
    b"'",
    b"~",
)


@dataclass(frozen=True)
class SettingsCase:
    """A settings class and the environment it needs to start (its required values)."""

    cls: type[ServiceSettings]
    env: dict[str, str]


def settings_cases() -> list[SettingsCase]:
    from cmts_agent.settings import CmtsAgentSettings
    from detector_smtp.settings import DetectorSmtpSettings
    from detector_snort.settings import DetectorSnortSettings
    from policy.settings import PolicySettings
    from portal.settings import PortalSettings
    from provisioner.settings import ProvisionerSettings

    token = "t" * 24
    return [
        SettingsCase(ServiceSettings, {}),
        SettingsCase(PolicySettings, {"LAZARETTO_ADMIN_TOKEN": token, "LAZARETTO_PORTAL_TOKEN": token}),
        SettingsCase(ProvisionerSettings, {"LAZARETTO_ADMIN_TOKEN": token, "LAZARETTO_TSIG_SECRET": token}),
        SettingsCase(
            CmtsAgentSettings, {"LAZARETTO_ADMIN_TOKEN": token, "LAZARETTO_CMTS_WRITE_COMMUNITY": "private"}
        ),
        SettingsCase(PortalSettings, {"LAZARETTO_PORTAL_TOKEN": token, "LAZARETTO_FORM_SECRET": token}),
        SettingsCase(DetectorSnortSettings, {}),
        SettingsCase(DetectorSmtpSettings, {}),
    ]


SETTINGS_VALUES = (
    b"1",
    b"-1",
    b"0",
    b"1e309",
    b"nan",
    b"true",
    b"[]",
    b"{}",
    b'["100.64.0.0/10"]',
    b'[{"path": "/tmp/x", "format": "eve"}]',
    b'[{"name": "c1", "host": "127.0.0.1", "write_community": "w"}]',
    b'{"100.64.0.1": "ids"}',
    b"http://127.0.0.1:8400",
    b"amqp://u:p@h/",
    b"[0.5, 2]",
    b"/tmp/x",
)


def _settings_target() -> Target:
    cases = settings_cases()
    fields = [(case, name) for case in cases for name in sorted(case.cls.model_fields)]

    def parse(data: bytes) -> object:
        # First byte picks the class and field; the rest is the variable's value, as an operator
        # (or a broken deploy script) would write it.
        if not data:
            data = b"\x00"
        case, name = fields[data[0] % len(fields)]
        value = data[1:].decode("utf-8", "replace").replace("\x00", "")
        variable = f"LAZARETTO_{name.upper()}"
        saved = {k: v for k, v in os.environ.items() if k.startswith("LAZARETTO_")}
        try:
            for key in saved:
                del os.environ[key]
            os.environ.update(case.env)
            os.environ[variable] = value
            try:
                return case.cls()
            except SettingsInvalid as exc:
                if CANARY in value and CANARY in str(exc):
                    raise AssertionError(f"{variable}'s value quoted in the settings error") from None
                raise
        finally:
            for key in [k for k in os.environ if k.startswith("LAZARETTO_")]:
                del os.environ[key]
            os.environ.update(saved)

    seeds = tuple(bytes([i]) + value for i in range(0, len(fields), 3) for value in SETTINGS_VALUES[:4])
    seeds += tuple(bytes([i % 256]) + v for i, v in enumerate(SETTINGS_VALUES * 4))
    return Target(
        name="settings",
        parse=parse,
        rejects=(SettingsInvalid,),
        seeds=seeds,
        tokens=(*SETTINGS_VALUES, CANARY.encode(), b'"' + CANARY.encode() + b'"'),
        meta={"fields": len(fields)},
    )


# ------------------------------------------------------------------------------------------- policy

# RFC 5965 appendix B.2 (an ARF report with the original message), as a mailbox provider sends it.
ARF_RFC5965 = (
    b"From: <arf-daemon@example.com>\r\nTo: <abuse@example.net>\r\nSubject: FW: Earn money\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=feedback-report; boundary="part1_13d.2e68ed54_boundary"\r\n'
    b'\r\n--part1_13d.2e68ed54_boundary\r\nContent-Type: text/plain; charset="US-ASCII"\r\n'
    b"Content-Transfer-Encoding: 7bit\r\n\r\nThis is an email abuse report for an email message\r\n"
    b"received from IP 192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.\r\n"
    b"--part1_13d.2e68ed54_boundary\r\nContent-Type: message/feedback-report\r\n\r\n"
    b"Feedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
    b"Original-Mail-From: <somespammer@example.net>\r\nOriginal-Rcpt-To: <user@example.com>\r\n"
    b"Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\r\nReporting-MTA: dns; mail.example.com\r\n"
    b"Source-IP: 192.0.2.1\r\n"
    b"Authentication-Results: mail.example.com; spf=fail smtp.mail=somespammer@example.com\r\n"
    b"Reported-Domain: example.net\r\nReported-Uri: http://example.net/earn_money.html\r\n"
    b"Reported-Uri: mailto:user@example.com\r\nRemoved-Recipient: user@example.com\r\n\r\n"
    b"--part1_13d.2e68ed54_boundary\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
    b"From: <somespammer@example.net>\r\nReceived: from mailserver.example.net (mailserver.example.net\r\n"
    b"        [192.0.2.1]) by example.com with ESMTP id M63d4137594e46;\r\n"
    b"        Thu, 08 Mar 2005 14:00:00 -0400\r\nTo: <Undisclosed Recipients>\r\n"
    b"Subject: Earn money\r\nMIME-Version: 1.0\r\nContent-type: text/plain\r\n"
    b"Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net\r\nDate: Thu, 02 Sep 2004 12:31:03 -0500\r\n"
    b"\r\nSpam Spam Spam\r\nSpam Spam Spam\r\n--part1_13d.2e68ed54_boundary--\r\n"
)
# X-ARF v0.2: a plain-text part, then the YAML report, then the evidence.
X_ARF = (
    b"From: <abuse@reporter.example>\r\nTo: <abuse@isp.example>\r\n"
    b"Subject: abuse report about 100.64.0.10\r\n"
    b"X-ARF: Yes\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="Abuse-bb4a1f8a"\r\n\r\n'
    b"--Abuse-bb4a1f8a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"We received a port scan from 100.64.0.10.\r\n"
    b'--Abuse-bb4a1f8a\r\nContent-Type: text/plain; charset=utf-8; name="report.txt"\r\n\r\n'
    b"---\r\nReported-From: abuse@reporter.example\r\nCategory: abuse\r\nReport-Type: portscan\r\n"
    b"Service: tcp\r\nVersion: 0.2\r\nUser-Agent: fail2ban\r\nDate: Thu, 08 Mar 2024 14:00:00 +0000\r\n"
    b"Source-Type: ipv4\r\nSource: 100.64.0.10\r\nPort: 22\r\nSchema-URL: http://www.x-arf.org/schema/abuse_login-attack_0.1.2.json\r\n"
    b'--Abuse-bb4a1f8a\r\nContent-Type: text/plain; charset=utf-8; name="logfile.log"\r\n\r\n'
    b"2024-03-08 14:00:00 sshd: Failed password for root from 100.64.0.10\r\n--Abuse-bb4a1f8a--\r\n"
)
ARF_SEEDS = (ARF_RFC5965, X_ARF, ARF_RFC5965.replace(b"192.0.2.1", b"2001:db8::1"))
ARF_TOKENS = (
    b"multipart/report",
    b"message/feedback-report",
    b"Feedback-Type: ",
    b"Source-IP: ",
    b"Arrival-Date: ",
    b"X-ARF: yes\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"=?utf-8?b?",
    b"boundary=",
    b"\r\n--",
)


def _policy_rules(data: bytes) -> object:
    # The rule file as policy loads it at start and on reload.
    return parse_rules(data, "fuzz")


def _policy_rules_seeds() -> tuple[bytes, ...]:
    shipped_rules = resources.files("policy").joinpath("default_rules.yaml").read_bytes()
    return (
        shipped_rules,
        b"name: isp\nrules:\n  - name: scan\n    categories: [scan]\n"
        b"    when: [{distinct_destinations: 20}]\n"
        b"    scope: modem\n    garden: full\n    ladder: {grace: 0, delay: 60, expiry: 86400,"
        b" escalation: [{self_release: now}, {self_release: later, wait: 3600}, {self_release: never}]}\n",
        b"name: spam\nrules:\n  - {name: spam, categories: [spam], when: [{count: 2}], garden: smtp_block}\n",
    )


RULES_TOKENS = (
    b"garden: smtp_block",
    b"action: dry_run",
    b"self_release: later",
    b"weights: {1: 1.5}",
    b"when: [{score: 1e309}]",
    b"window: -1",
    b"!!python/object:os.system",
    b"&a [*a, *a]",
    b"- ",
    b": ",
    b"~",
)


# ------------------------------------------------------------------------------------------- registry


def all_targets() -> Iterator[Target]:
    ids = (ParseError,)
    yield Target("eve", parse_eve_line, ids, (json.dumps(EVE).encode(),), IDS_TOKENS, json_seeds=True)
    yield Target(
        "snort3-json",
        lambda d: parse_snort3_json_line(d, now=NOW),
        ids,
        (json.dumps(SNORT3).encode(),),
        IDS_TOKENS,
        json_seeds=True,
    )
    yield Target("fast", lambda d: parse_fast_line(d, now=NOW), ids, FAST_LINES, IDS_TOKENS)
    yield Target("fast-yy/mm/dd", _fast("YY/MM/DD"), ids, FAST_LINES, IDS_TOKENS)
    yield Target("fast-mm/dd", _fast("MM/DD"), ids, FAST_LINES, IDS_TOKENS)
    yield Target("syslog-5424", lambda d: parse_syslog(d, now=NOW), ids, SYSLOG_5424, IDS_TOKENS)
    yield Target("syslog-3164", lambda d: parse_syslog(d, now=NOW), ids, SYSLOG_3164, IDS_TOKENS)
    yield Target(
        "postfix-policy", _policy, (PolicyProtocolError,), (POLICY_REQUEST, POLICY_DATA), MAIL_TOKENS
    )
    yield Target("maillog-postfix", _maillog("postfix"), (), POSTFIX_LOG, MAIL_TOKENS)
    yield Target("maillog-sendmail", _maillog("sendmail"), (), SENDMAIL_LOG, MAIL_TOKENS)
    yield Target("maillog-exim", _maillog("exim"), (), EXIM_LOG, MAIL_TOKENS)
    yield _settings_target()
    yield Target("remediation-file", _remediation, (ValueError,), _remediation_seeds(), REMEDIATION_TOKENS)
    for contract in ALL_CONTRACTS:
        yield _contract(contract)
    yield Target("arf", parse_report, (ReportInvalid,), ARF_SEEDS, (*MAIL_TOKENS, *ARF_TOKENS))
    yield Target("policy-rules", _policy_rules, (RulesError,), _policy_rules_seeds(), RULES_TOKENS)
