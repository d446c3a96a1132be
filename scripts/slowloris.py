#!/usr/bin/env python3
"""Slow-client attack on a submitd listener, and what it does to a real user.

usage: slowloris.py PORT CA USER PASSWORD [--handshakes N] [--tricklers N]
                    [--addresses N] [--seconds S] [--legit N] [--fresh N]

Loopback only: the attacker's connections come from 127.0.1.1 .. 127.0.1.N
(--addresses) to 127.0.0.1:PORT. Two kinds, each reconnecting at once when
the server closes it, as a real attacker would:

  handshakes  TCP, 4 octets of a TLS ClientHello, then nothing
  tricklers   TLS done, then "EHLO x" one octet every 5 s, never logging in

Before the attack the legitimate user logs in once from 127.0.0.1, as a
real user has before (its address is then one that logged in lately).
After a 5 s warm-up the legitimate client (Python's smtplib) logs in and
sends one small message --legit times, one after the other, from that
address ("known"), then --fresh times, each from an address that never
logged in (127.0.2.1, 127.0.2.2, ...: "fresh"); the time of each (connect to 250) is measured.
Prints one line per session and a summary per kind:

  known: N ok, M failed, median X.XX s, max Y.YY s
  fresh: N ok, M failed, median X.XX s, max Y.YY s
  attack: A connections opened in S s

Bounded: every connection and the whole run stop after --seconds (default
30) plus the legitimate sessions' own timeouts. Exit status 0 always; the
caller judges the figures.
"""

import argparse
import asyncio
import smtplib
import ssl
import statistics
import sys
import time


async def handshake_loop(port, source, stop, counter):
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5
            )
        except Exception:
            await asyncio.sleep(0.2)
            continue
        counter[0] += 1
        try:
            writer.write(b"\x16\x03\x01\x02")
            await writer.drain()
            # Wait until the server gives up on us (or the run ends).
            await asyncio.wait_for(reader.read(1), max(0.1, stop - time.monotonic()))
        except Exception:
            pass
        writer.close()


async def trickle_loop(port, source, ctx, stop, counter):
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(source, 0), ssl=ctx,
                    server_hostname="localhost",
                ),
                10,
            )
        except Exception:
            await asyncio.sleep(0.2)
            continue
        counter[0] += 1
        try:
            await asyncio.wait_for(reader.readline(), 10)
            for octet in b"EHLO slow.example\r\n" * 100:
                if time.monotonic() >= stop:
                    break
                writer.write(bytes([octet]))
                await writer.drain()
                # Closed by the server? Then reconnect.
                try:
                    data = await asyncio.wait_for(reader.read(512), 5)
                    if not data:
                        break
                except asyncio.TimeoutError:
                    pass
        except Exception:
            pass
        writer.close()


def legit_session(port, ca, user, password, source):
    started = time.monotonic()
    ctx = ssl.create_default_context(cafile=ca)
    with smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=30,
                          source_address=(source, 0)) as s:
        s.login(user, password)
        s.sendmail(
            user if "@" in user else "alice@example.org",
            ["bob@example.net"],
            "From: alice@example.org\r\nSubject: legit\r\n\r\nhello\r\n",
        )
    return time.monotonic() - started


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("ca")
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--handshakes", type=int, default=500)
    p.add_argument("--tricklers", type=int, default=500)
    p.add_argument("--addresses", type=int, default=100)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--legit", type=int, default=10)
    p.add_argument("--fresh", type=int, default=0)
    a = p.parse_args()
    loop = asyncio.get_running_loop()
    # The user has logged in from home before.
    await loop.run_in_executor(
        None, legit_session, a.port, a.ca, a.user, a.password, "127.0.0.1")
    began = time.monotonic()
    stop = began + a.seconds
    ctx = ssl.create_default_context(cafile=a.ca)
    counter = [0]
    sources = ["127.0.1.%d" % (1 + i % 250) for i in range(max(1, a.addresses))]
    tasks = []
    for i in range(a.handshakes):
        tasks.append(asyncio.create_task(
            handshake_loop(a.port, sources[i % len(sources)], stop, counter)))
    for i in range(a.tricklers):
        tasks.append(asyncio.create_task(
            trickle_loop(a.port, sources[i % len(sources)], ctx, stop, counter)))
    if tasks:
        await asyncio.sleep(min(5, a.seconds / 2))
    summaries = []
    for kind, count in (("known", a.legit), ("fresh", a.fresh)):
        times, failed = [], 0
        for i in range(count):
            # A fresh session comes from an address never seen before.
            source = "127.0.0.1" if kind == "known" else "127.0.2.%d" % (1 + i % 250)
            try:
                t = await loop.run_in_executor(
                    None, legit_session, a.port, a.ca, a.user, a.password, source)
                times.append(t)
                print("%s ok %.3f s" % (kind, t), flush=True)
            except Exception as e:
                failed += 1
                print("%s failed: %r" % (kind, e), flush=True)
        if count:
            median = statistics.median(times) if times else float("nan")
            worst = max(times) if times else float("nan")
            summaries.append("%s: %d ok, %d failed, median %.2f s, max %.2f s"
                             % (kind, len(times), failed, median, worst))
    elapsed = time.monotonic() - began
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for line in summaries:
        print(line, flush=True)
    print("attack: %d connections opened in %.0f s" % (counter[0], elapsed), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
