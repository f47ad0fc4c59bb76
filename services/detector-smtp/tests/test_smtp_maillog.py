"""MTA log parsers on real lines: Postfix 3.7 (lab), Sendmail and Exim (cited corpora, lab notes 3.4)."""

# ruff: noqa: E501  (real log lines are kept verbatim)

from __future__ import annotations

from detector_smtp.maillog import EximLogParser, PostfixLogParser, SendmailLogParser, parser_for
from detector_smtp.windows import MailEvent

POSTFIX = b"""\
Nov 26 03:58:13 mx-lab postfix/smtpd[32295]: connect from cpe-100-64-2-20.dyn.isp.example[100.64.2.20]
Nov 26 03:58:13 mx-lab postfix/smtpd[32295]: 0A72F218700: client=cpe-100-64-2-20.dyn.isp.example[100.64.2.20]
Nov 26 03:58:13 mx-lab postfix/cleanup[32436]: 0A72F218700: message-id=<20261126035813.032439@vm>
Nov 26 03:58:13 mx-lab postfix/qmgr[32285]: 0A72F218700: from=<a@spam.example>, size=423, nrcpt=3 (queue active)
Nov 26 03:58:13 mx-lab postfix/smtpd[32295]: disconnect from cpe-100-64-2-20.dyn.isp.example[100.64.2.20] ehlo=2 xclient=0/1 mail=1 rcpt=3 data=1 quit=1 commands=8/9
Nov 26 03:58:13 mx-lab postfix/discard[32437]: 0A72F218700: to=<v3@example.com>, relay=none, delay=0.01, delays=0/0/0/0, dsn=2.0.0, status=sent (lab-no-delivery)
Nov 26 03:58:13 mx-lab postfix/qmgr[32285]: 0A72F218700: removed
Nov 26 03:58:15 mx-lab postfix/smtpd[32295]: NOQUEUE: reject: RCPT from cpe-100-64-2-21.dyn.isp.example[100.64.2.21]: 554 5.7.1 <user5@example.org>: Recipient address rejected: <user5@example.org>: too many recipients from 100.64.2.21 (6/h), host may be infected; from=<noreply5@bulk.example> to=<user5@example.org> proto=ESMTP helo=<win10-pc>
Jul 12 07:47:48 saturn postfix/smtpd[8738]: NOQUEUE: reject: RCPT from 1-2-3-4-example.com[1.2.3.4]: 554 5.7.1 <smtp@example.com>: Relay access denied; from=<john@example.com> to=<smtp@example.org> proto=SMTP helo=<198.51.100.17>
Feb 10 13:26:34 srv postfix/smtpd[123]: disconnect from unknown[192.0.2.1] helo=1 auth=0/1 quit=1 commands=2/3
Nov 26 04:00:00 mx postfix/submission/smtpd[77]: 1B2C3D4E5F: client=unknown[2001:db8::7], sasl_method=PLAIN, sasl_username=joe
"""

SENDMAIL = b"""\
Nov  3 11:35:30 Microsoft sendmail[26254]: rA37ZTSC026254: from=<davaojk25@domain.com>, size=0, class=0, nrcpts=0, bodytype=8BITMIME, proto=ESMTP, daemon=MTA, relay=163.23.32.95.dsl-dynamic.vsi.ru [95.32.23.163]
Feb  6 12:14:43 localhost sendmail[65623]: g16HEgs9065623: from=<USER.ACCT@myhost.mydomain.com>, size=5, class=0, nrcpts=1, msgid=<200202061714.g16HEgik065622@myhost.mydomain.com>, proto=ESMTP, daemon=MTA, relay=localhost [127.0.0.1]
Feb 25 03:01:10 kismet sm-acceptingconnections[27713]: s1P819mk027713: ruleset=check_rcpt, arg1=<asservnew@freemailhost.ru>, relay=128-68-136-133.broadband.corbina.ru [128.68.136.133], reject=550 5.7.1 <asservnew@freemailhost.ru>... Relaying denied. Proper authentication required.
Feb 25 04:02:27 relay1 sendmail[16664]: 06I02CNi016764: AUTH failure (LOGIN): authentication failure (-13) SASL(-13): authentication failure: checkpass failed, user=user@example.com, relay=example.com [192.0.2.3] (may be forged)
Nov 26 05:00:00 mx sm-mta[100]: 5AQ50000000100: from=<x@bulk.example>, size=900, class=0, nrcpts=4, msgid=<a@b>, proto=ESMTP, daemon=MTA, relay=[100.64.4.4]
"""

EXIM = b"""\
2017-06-08 11:17:56 1dJ08B-0003oP-5i <= do-not-reply@nowhere.com H=realmail.server.example.com (ehlo-name.example.com) [192.168.250.101] P=esmtp S=1364 id=266785270.3.2385849643852@peerhost.server.example.com
1999-03-02 09:44:33 10HmaY-0005vi-00 <= CALLER@myhost.test.ex H=localhost (myhost.test.ex) [127.0.0.1] P=esmtpsa X=TLSv1:AES256-SHA:256 A=plain:userx S=sss id=E10HmaX-0005vi-00@myhost.test.ex
2016-03-25 15:06:04 1ajLoq-0001wC-Pk <= email@buytickets.com.my H=mail.buytickets.com.my (buytickets.com.my) [124.217.254.72]:39926 P=esmtpa A=dovecot_login:email@buytickets.com.my S=964 id=f0876b3d8d0f5536de861efdbaf97057@buytickets.com.my T="Copy of: Support Enquiry" for 0129.alexng@gmail.com
2013-06-15 16:34:55 H=mx.tillions.com [182.18.24.93] F=<buh@caladan.ebay.sun.com> rejected RCPT <ruslan@maslovskiy.com.ua>: Sender verify failed
2013-06-10 18:33:32 [10099] H=(yakult.com.tw) [202.132.70.178]:3755 I=[1.2.3.4]:25 F=menacedsj04@listserv.eurasia.org rejected RCPT dir@ml3.ru: relay not permitted
Mar  8 10:29:44 mail exim[11721]: 2011-03-08 10:29:44 1Pwzn4-0002xx-Aa <= a@b.example H=(x) [100.64.1.2] P=esmtp S=100 for a@x.org b@y.org
2011-03-08 10:29:45 SMTP connection from (helo) [100.64.1.2]:51234 I=[10.0.0.1]:25 (TCP/IP connection count = 1)
2011-03-08 10:29:46 1Pwzn4-0002xx-Aa => a@x.org R=dnslookup T=remote_smtp H=mx.x.org [192.0.2.9]
2011-03-08 10:29:47 1Pwzn5-0002xx-Bb <= <> R=1Pwzn4-0002xx-Aa U=Debian-exim P=local S=1900
"""


def parse_all(parser: PostfixLogParser | SendmailLogParser | EximLogParser, text: bytes) -> list[tuple]:  # type: ignore[type-arg]
    events: list[MailEvent] = [e for line in text.splitlines() if (e := parser.parse(line, 7.0)) is not None]
    assert all(e.at == 7.0 for e in events)
    return [
        (e.ip, e.messages, e.recipients, e.connections, e.rejected, e.auth_messages, e.sender, e.recipient)
        for e in events
    ]


def test_postfix_lines() -> None:
    assert parse_all(PostfixLogParser(), POSTFIX) == [
        ("100.64.2.20", 0, 0, 1, 0, 0, None, None),  # connect
        # client= names the client of the queue id; the message counts once accepted (qmgr nrcpt=)
        ("100.64.2.20", 1, 3, 0, 0, 0, "spam.example", None),
        ("100.64.2.21", 0, 0, 0, 1, 0, "bulk.example", "example.org"),  # NOQUEUE reject
        ("1.2.3.4", 0, 0, 0, 1, 0, "example.com", "example.org"),
    ]
    # a SASL submission counts as an authenticated message once qmgr shows it accepted
    parser = PostfixLogParser()
    assert parse_all(parser, POSTFIX.splitlines()[-1]) == []
    qmgr = b"Nov 26 04:00:01 mx postfix/qmgr[9]: 1B2C3D4E5F: from=<joe@isp.example>, size=9, nrcpt=2 (queue active)"
    assert parse_all(parser, qmgr) == [("2001:db8::7", 1, 2, 0, 0, 1, "isp.example", None)]
    assert parse_all(parser, qmgr) == []  # the same message through the active queue again (a retry)


def test_postfix_full_addresses_only_when_enabled() -> None:
    rows = parse_all(PostfixLogParser(full_addresses=True), POSTFIX)
    assert rows[2][6:] == ("noreply5@bulk.example", "user5@example.org")


def test_postfix_queue_join_is_bounded() -> None:
    parser = PostfixLogParser(max_queue_ids=10)
    for i in range(100):
        parser.parse(b"Nov 26 03:58:13 mx postfix/smtpd[1]: Q%d: client=x[100.64.0.1]" % i, 0.0)
    assert len(parser._queue) == 10


def test_postfix_queue_ids_waiting_for_their_message_are_handed_to_the_next_parser() -> None:
    # Given a parser that read two client= lines, one long ago (a message abandoned in DATA)
    before = PostfixLogParser()
    before.parse(b"Nov 26 03:00:00 mx postfix/smtpd[1]: 0LDQ1: client=x[100.64.0.9]", 100.0)
    before.parse(
        b"Nov 26 03:58:14 mx postfix/smtpd[1]: 4AbCdE1234: client=cpe[100.64.2.21], sasl_username=joe", 3600.0
    )
    saved = before.pending_joins(since=3000.0)
    assert saved == [("4AbCdE1234", "100.64.2.21", True, 3600.0)]
    # When a restarted parser takes them back (a malformed row is skipped) and reads the qmgr line
    after = PostfixLogParser()
    assert after.restore_joins([*saved, ["bad"], ("Q\u00e9", "100.64.0.1", False, 1.0)]) == 1
    qmgr = b"Nov 26 03:58:15 mx postfix/qmgr[100]: 4AbCdE1234: from=<a@bulk.example>, size=512, nrcpt=25 (queue active)"
    # Then the message counts, with its client and its 25 recipients
    assert parse_all(after, qmgr) == [("100.64.2.21", 1, 25, 0, 0, 1, "bulk.example", None)]
    assert after.pending_joins(since=0.0) == []
    # Formats without a join table have nothing to hand over
    assert SendmailLogParser().pending_joins(0.0) == EximLogParser().pending_joins(0.0) == []


def test_sendmail_lines() -> None:
    assert parse_all(SendmailLogParser(), SENDMAIL) == [
        ("127.0.0.1", 1, 1, 0, 0, 0, "myhost.mydomain.com", None),  # nrcpts=0 line skipped
        ("128.68.136.133", 0, 0, 0, 1, 0, None, "freemailhost.ru"),
        ("100.64.4.4", 1, 4, 0, 0, 0, "bulk.example", None),
    ]


def test_sendmail_client_address_comes_from_the_real_relay_field_not_the_senders_text() -> None:
    # given receipt lines whose Message-ID (the sender's to choose) carries a fake relay= field, and a
    # refusal whose recipient (also the sender's) does
    lines = b"""\
Nov 26 05:00:01 mx sm-mta[100]: 5AQ50000000101: from=<x@bulk.example>, size=900, class=0, nrcpts=3, msgid=<a, relay=victim.example [192.0.2.55]>, proto=ESMTP, daemon=MTA, relay=cpe-5.isp.example [100.64.5.5]
Nov 26 05:00:02 mx sm-mta[100]: 5AQ50000000102: from=<x@bulk.example>, size=900, class=0, nrcpts=2, msgid=<b@relay=[192.0.2.56]>, proto=ESMTP, daemon=MTA, relay=[100.64.5.6] (may be forged)
Nov 26 05:00:03 mx sm-mta[100]: 5AQ50000000103: from=<"q, relay=a [192.0.2.57]"@bulk.example>, size=9, class=0, nrcpts=1, msgid=<c@d>, proto=ESMTP, daemon=MTA, relay=cpe-7.isp.example [100.64.5.7]
Nov 26 05:00:04 mx sm-mta[100]: 5AQ50000000104: ruleset=check_rcpt, arg1=<"v, relay=x [192.0.2.58], reject=550"@example.org>, relay=cpe-8.isp.example [100.64.5.8], reject=550 5.7.1 <"v, relay=x [192.0.2.58], reject=550"@example.org>... Relaying denied
"""
    # then each line counts for the client Sendmail itself names in its last relay= field
    assert [(e[0], e[1], e[2], e[4]) for e in parse_all(SendmailLogParser(), lines)] == [
        ("100.64.5.5", 1, 3, 0),
        ("100.64.5.6", 1, 2, 0),
        ("100.64.5.7", 1, 1, 0),
        ("100.64.5.8", 0, 0, 1),
    ]


def test_exim_lines() -> None:
    assert parse_all(parser_for("exim"), EXIM) == [  # type: ignore[arg-type]
        ("192.168.250.101", 1, 1, 0, 0, 0, "nowhere.com", None),
        ("127.0.0.1", 1, 1, 0, 0, 1, "myhost.test.ex", None),
        ("124.217.254.72", 1, 1, 0, 0, 1, "buytickets.com.my", "gmail.com"),
        ("182.18.24.93", 0, 0, 0, 1, 0, None, "maslovskiy.com.ua"),
        ("202.132.70.178", 0, 0, 0, 1, 0, None, "ml3.ru"),
        ("100.64.1.2", 1, 2, 0, 0, 0, "b.example", "x.org"),  # syslog prefix, `for` two recipients
        ("100.64.1.2", 0, 0, 1, 0, 0, None, None),  # +smtp_connection
    ]


def test_exim_a_for_in_the_subject_or_another_quoted_field_is_no_recipient_list() -> None:
    # Given arrival lines whose subject (T="...", a quote inside escaped as \") says " for "
    head = b"2016-03-25 15:06:04 1ajLoq-0001wC-Pk <= email@buytickets.com.my H=mail.buytickets.com.my (buytickets.com.my) [124.217.254.72]:39926 P=esmtp S=964 id=f08@buytickets.com.my"
    lines = [
        head + b' T="Thanks for your order" for alice@example.org',
        head + b' T="Invoice for March"',
        head + b' T="say \\" for bob@evil.example \\" twice" for alice@example.org carol@example.net',
        head + b' DN="CN=mail for x" T="Hi" for alice@example.org',
    ]
    # Then the recipients are the `for` list after the quoted fields, or 1 without one
    assert [(e[2], e[7]) for e in parse_all(EximLogParser(), b"\n".join(lines))] == [
        (1, "example.org"),
        (1, None),
        (2, "example.org"),
        (1, "example.org"),
    ]


def test_garbage_lines_are_ignored() -> None:
    for parser in (PostfixLogParser(), SendmailLogParser(), EximLogParser()):
        for line in (
            b"",
            b"\xff\xfe\x00",
            b"postfix: client=",
            b" <= x H=",
            b"relay= nrcpts=",
            b"x" * 10_000,
        ):
            assert parser.parse(line, 0.0) is None
