"""Property-based: whatever the chunking, pauses and buffer limits, bytes arrive intact and counts are exact."""

from __future__ import annotations

import asyncio
import threading

from _helpers import Collect, closed, tcp_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import traced_transport as tt

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 70000)),
        st.tuples(st.just("writelines"), st.lists(st.integers(0, 5000), max_size=5)),
        st.tuples(st.just("pause"), st.just(0)),
        st.tuples(st.just("resume"), st.just(0)),
        st.tuples(st.just("yield"), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)
limits = st.one_of(st.none(), st.tuples(st.integers(1, 1 << 17), st.integers(0, 1 << 16)))


class Echo(Collect):
    """Echoes, and obeys write backpressure by pausing its own reading."""

    def __init__(self):
        super().__init__(echo=True)

    def pause_writing(self):
        super().pause_writing()
        self.transport.pause_reading()

    def resume_writing(self):
        super().resume_writing()
        self.transport.resume_reading()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops, limit=limits, seed=st.integers(0, 2**16))
def test_echo_intact_and_counted(run, script, limit, seed):
    registry = tt.Registry()

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            Echo,
            wrap_server=lambda f: tt.traced(f, name="s", registry=registry),
            wrap_client=lambda f: tt.traced(f, name="c", side="client", registry=registry),
        )
        if limit is not None:
            high, low = limit
            s_app.transport.set_write_buffer_limits(high=max(high, low), low=min(high, low))
        sent = bytearray()
        counter = seed
        app_paused = False
        for op, arg in script:
            if op == "write":
                chunk = bytes((counter + i) % 251 for i in range(arg % 997)) * (arg // 997 + 1)
                chunk = chunk[:arg]
                counter += 1
                c_tr.write(chunk)
                sent += chunk
            elif op == "writelines":
                chunks = [bytes([counter % 256]) * n for n in arg]
                counter += 1
                c_tr.writelines(chunks)
                sent += b"".join(chunks)
            elif op == "pause":
                s_app.transport.pause_reading()  # a storm of app pauses on top of backpressure
                app_paused = True
            elif op == "resume":
                s_app.transport.resume_reading()
                app_paused = False
            else:
                await asyncio.sleep(0)
        if app_paused or not s_app.transport.is_reading():
            s_app.transport.resume_reading()
        await c_app.wait_bytes(len(sent))
        assert bytes(c_app.data) == bytes(sent)
        s_rec, c_rec = s_app.transport.traced_record, c_tr.traced_record
        assert (c_rec.tx, s_rec.rx, s_rec.tx, c_rec.rx) == (len(sent),) * 4
        # transitions are counted once each, and every pause ended or is the current one
        assert s_rec.read_pauses >= 0 and (s_rec.read_paused_since is None) == s_app.transport.is_reading()
        assert s_rec.write_pauses == s_app.paused
        c_tr.close()
        await s_app.lost
        await closed(server)
        s = registry.totals("s")
        assert (s.rx, s.tx, s.active, s.closed) == (len(sent), len(sent), 0, 1)

    run(main)


def test_snapshots_from_another_thread_never_go_backwards(run):
    registry = tt.Registry()
    stop = threading.Event()
    scraped = threading.Event()
    problems: list[str] = []
    scrapes = [0]

    def scraper():
        last = (0, 0, 0)
        while not stop.is_set():
            t = registry.totals()
            now = (t.opened, t.rx, t.tx)
            if any(a < b for a, b in zip(now, last)) or t.active < 0:
                problems.append(f"{now} after {last}")
            last = now
            scrapes[0] += 1
            scraped.set()
            # Give the GIL back: a scraper spinning on it starves the loop thread on a busy machine.
            stop.wait(0.001)

    async def main():
        loop = asyncio.get_running_loop()
        server = await tt.start_server(_echo_once, "127.0.0.1", 0, name="s", registry=registry)
        port = server.sockets[0].getsockname()[1]

        async def one(i):
            reader, writer = await tt.open_connection("127.0.0.1", port, name="c", registry=registry)
            writer.write(b"x" * (i + 1))
            await reader.readexactly(i + 1)
            writer.close()
            await writer.wait_closed()

        for batch in range(10):
            scraped.clear()
            await asyncio.gather(*(one(batch * 20 + i) for i in range(20)))
            # At least one scrape per batch, whatever the machine's load: bounded by events, not time.
            assert await loop.run_in_executor(None, scraped.wait, 60)
        await closed(server)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        run(main, timeout=120)  # a bound for a hang, not a measure: the work is a fixed count
    finally:
        stop.set()
        thread.join()
    assert not problems
    assert scrapes[0] >= 10
    s = registry.totals("s")
    expected = sum(range(1, 201))
    assert (s.opened, s.closed, s.rx, s.tx) == (200, 200, expected, expected)


async def _echo_once(reader, writer):
    data = await reader.read(100000)
    writer.write(data)
    await writer.drain()
    await reader.read()  # until the client closes
    writer.close()
