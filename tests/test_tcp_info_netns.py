"""TCP_INFO checked against ``ss -tin`` on a lossy, slow link made on purpose, on both loops.

The test makes its own network namespace (root needed), gives its loopback a
1500-byte MTU, a token-bucket rate limit (queueing delay: a measurable RTT)
and an nftables rule dropping a random share of the segments the client
sends (retransmissions). The netem qdisc would be the obvious tool but this
kernel has no sch_netem, hence tbf + nftables. The event loop runs in a thread
that joined the namespace with setns(2), so every socket it makes lives there.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import subprocess
import sys
import threading
import uuid

import pytest
from _helpers import closed, require_binary, tcp_pair
from test_telemetry import Otel

from traced_transport.telemetry import tcp_info as ti

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO and netns are Linux's")

CLONE_NEWNET = 0x40000000
PAYLOAD = 1_500_000


def _facility_missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def lossy_netns():
    """A namespace whose loopback is slow (tbf) and drops a share of segments to the server port (nftables)."""
    require_binary("ip", "iproute2")
    require_binary("tc", "iproute2")
    require_binary("ss", "iproute2")
    require_binary("nft", "nftables")
    if os.geteuid() != 0:
        _facility_missing("network namespaces need root")
    name = f"tt-tcpinfo-{uuid.uuid4().hex[:8]}"
    try:
        _sh("ip", "netns", "add", name)
    except subprocess.CalledProcessError as exc:
        _facility_missing(f"cannot create a network namespace: {exc.stderr}")
    try:
        ns = ("ip", "netns", "exec", name)
        _sh(*ns, "ip", "link", "set", "lo", "mtu", "1500", "up")
        _sh(
            *ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "tbf",
            "rate",
            "20mbit",
            "burst",
            "32kbit",
            "latency",
            "50ms",
        )
        yield name
    finally:
        subprocess.run(("ip", "netns", "del", name), capture_output=True, timeout=30)


def _drop_share_to(ns: str, port: int, one_in: int) -> None:
    ex = ("ip", "netns", "exec", ns, "nft")
    _sh(*ex, "add", "table", "inet", "tcpinfo_test")
    _sh(*ex, "add", "chain", "inet", "tcpinfo_test", "in", "{ type filter hook input priority 0 ; }")
    _sh(*ex, "add", "rule", "inet", "tcpinfo_test", "in", "tcp", "dport", str(port), "numgen", "random", "mod", str(one_in), "0", "counter", "drop")  # fmt: skip


def _run_in_netns(ns: str, loop_kind: str, coro_fn):
    """Run ``coro_fn()`` on a new loop of ``loop_kind`` in a thread that joined ``ns``."""
    result: dict = {}

    def target():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            if loop_kind == "uvloop":
                import uvloop

                loop = uvloop.new_event_loop()
            else:
                loop = asyncio.new_event_loop()
            try:
                result["value"] = loop.run_until_complete(asyncio.wait_for(coro_fn(), 60))
            finally:
                loop.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(90)
    assert not thread.is_alive(), "the namespaced loop did not finish"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def ss_info(ns: str, sport: int, dport: int) -> dict[str, str]:
    """``ss -tin``'s fields for the connection from ``sport`` to ``dport``, as ``{name: text}``."""
    out = subprocess.run(
        (
            "ip",
            "netns",
            "exec",
            ns,
            "ss",
            "-tinH",
            "state",
            "established",
            f"( sport = :{sport} and dport = :{dport} )",
        ),
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    fields = {}
    for token in out.split():
        m = re.fullmatch(r"([a-z_]+):([0-9.,/]+)", token)
        if m:
            fields[m.group(1)] = m.group(2)
    assert "rtt" in fields, out
    return fields


def _compare(ours: ti.TcpInfo, ss: dict[str, str]) -> None:
    """The fields ss prints, as it prints them (iproute2 misc/ss.c: tcp_show_info)."""
    rtt, rttvar = (float(x) for x in ss["rtt"].split("/"))
    assert rtt == pytest.approx(ours.rtt / 1000, abs=0.0015), (ss["rtt"], ours.rtt)
    assert rttvar == pytest.approx(ours.rttvar / 1000, abs=0.0015), (ss["rtt"], ours.rttvar)
    assert float(ss["minrtt"]) == pytest.approx(ours.min_rtt / 1000, abs=0.0015)
    assert int(ss["cwnd"]) == ours.snd_cwnd
    assert int(ss["mss"]) == ours.snd_mss
    assert int(ss["pmtu"]) == ours.pmtu
    assert int(ss["segs_out"]) == ours.segs_out
    assert int(ss["bytes_acked"]) == ours.bytes_acked
    assert int(ss["rto"]) == pytest.approx(ours.rto / 1000, abs=1)
    # ss prints "retrans:<now unacked retransmitted>/<total>" only when either is non-zero.
    now, total = (int(x) for x in ss.get("retrans", "0/0").split("/"))
    assert (now, total) == (ours.retrans, ours.total_retrans)
    assert int(ss.get("bytes_retrans", "0")) == (ours.bytes_retrans or 0)
    assert int(ss.get("unacked", "0")) == ours.unacked


def test_values_match_ss_and_retransmissions_show(loop_kind, lossy_netns):
    ns = lossy_netns
    otel = Otel(tcp_info=True)

    async def main():
        server, s_proto, c_tr, c_proto = await tcp_pair(wrap_server=otel.server(), wrap_client=otel.client())
        port = server.sockets[0].getsockname()[1]
        cport = c_tr.get_extra_info("sockname")[1]
        loop = asyncio.get_running_loop()
        # Clean start: nothing lost yet.
        before = ti.read_tcp_info(c_tr)
        assert before is not None and before.total_retrans == 0
        await loop.run_in_executor(None, _drop_share_to, ns, port, 8)
        c_tr.write(b"x" * PAYLOAD)
        await s_proto.wait_bytes(PAYLOAD)
        # Wait for the client's last segments to be acknowledged (the kernel's
        # own state, polled: there is no event for it), then compare while idle.
        for _ in range(200):
            ours = ti.read_tcp_info(c_tr)
            if ours.unacked == 0 and ours.notsent_bytes == 0:
                break
            await asyncio.sleep(0.05)
        ss = await loop.run_in_executor(None, ss_info, ns, cport, port)
        again = ti.read_tcp_info(c_tr)
        _compare(again, ss)
        assert again.total_retrans > 0, "the dropped share produced no retransmission"
        assert again.rtt >= 1000, f"tbf's queue should make the RTT at least a millisecond, got {again.rtt} µs"
        row = ti.tcp_info_row(c_tr)
        assert row["total_retrans"] == again.total_retrans and row["rtt_s"] == pytest.approx(again.rtt / 1e6)
        c_tr.close()
        await asyncio.wait_for(asyncio.gather(s_proto.lost, c_proto.lost), 30)
        await closed(server)
        return again

    last = _run_in_netns(ns, loop_kind, main)
    (span,) = [s for s in otel.spans() if s.name == "c connection"]
    assert span.attributes["transport.tcp.total_retrans"] >= last.total_retrans > 0
    assert span.attributes["transport.tcp.rtt"] >= 0.001
    metrics = otel.metrics()
    retrans = {a["transport.name"]: p.value for a, p, _ in metrics["transport.tcp.segments.retransmitted"]}
    sent = {a["transport.name"]: p.value for a, p, _ in metrics["transport.tcp.segments.sent"]}
    assert retrans["c"] >= last.total_retrans and sent["c"] >= last.segs_out > PAYLOAD // 1500
    share = {a["transport.name"]: p for a, p, _ in metrics["transport.tcp.retransmitted.ratio"]}
    assert 0 < share["c"].sum < 1
    rtt = {a["transport.name"]: p for a, p, _ in metrics["transport.tcp.rtt"]}
    assert rtt["c"].sum >= 0.001
