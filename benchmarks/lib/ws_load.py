"""WebSocket load for benchmarks/websocket.sh: 1 KiB text messages echoed by the mock upstream.

  ws_load.py throughput URL SECONDS CONNECTIONS WINDOW  -> messages per second, echoed
  ws_load.py latency URL COUNT                           -> p50 and p99 round trip, microseconds

Throughput keeps WINDOW messages in flight on each connection; latency sends one at a time.
"""
import asyncio, json, sys, time

import websockets

MESSAGE = json.dumps({"type": "mock.echo", "pad": "x" * (1024 - 32)})
assert len(MESSAGE) == 1024


async def pump(url, seconds, window, counts):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.recv()  # session.created
        deadline = time.monotonic() + seconds
        for _ in range(window):
            await ws.send(MESSAGE)
        echoed = 0
        while time.monotonic() < deadline:
            reply = await ws.recv()
            assert len(reply) == len(MESSAGE)
            echoed += 1
            await ws.send(MESSAGE)
        for _ in range(window):
            await ws.recv()
        counts.append(echoed)


async def throughput(url, seconds, connections, window):
    counts = []
    start = time.monotonic()
    await asyncio.gather(*(pump(url, seconds, window, counts) for _ in range(connections)))
    print(f"{sum(counts) / (time.monotonic() - start):.0f}")


async def latency(url, count):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.recv()
        times = []
        for index in range(count + 100):
            start = time.perf_counter_ns()
            await ws.send(MESSAGE)
            await ws.recv()
            if index >= 100:  # warm-up
                times.append((time.perf_counter_ns() - start) / 1000)
        times.sort()
        print(f"{times[len(times) // 2]:.1f} {times[int(len(times) * 0.99)]:.1f}")


if __name__ == "__main__":
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "throughput":
        asyncio.run(throughput(url, float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
    else:
        asyncio.run(latency(url, int(sys.argv[3])))
