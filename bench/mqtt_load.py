"""The MQTT parts of the end-to-end benchmark, each in its own process.

* :func:`publisher_main` pre-generates fleet traffic (``simulators.fleet``: real VINs,
  positions, VSS payloads) and publishes slices of it at QoS 1 through
  ``simulators.publish.Publisher`` (bounded in-flight), either as fast as the broker confirms
  or paced at a fixed rate, recording each message's send time.
* :func:`subscriber_main` subscribes to topic filters at QoS 1 and records, per message, its
  arrival time and a key (:data:`KEYS`) that ties it to the input that caused it — per view
  for a gateway batch (a JSON array of views): each view of it arrives when the batch does.
* :func:`relay_main` is the zero-work relay: the gateway's own MQTT input (persistent
  session, manual ack, bounded queue) and MQTT output (QoS 1, bounded in-flight), with
  nothing between them: each input is republished unchanged once per subscriber to
  ``share/<subscriber>/<vehicle>/telemetry`` and acknowledged once every copy is confirmed.

Processes talk to the benchmark over a :class:`multiprocessing.connection.Connection`
(commands are tuples whose first item names them). Send and arrival times are
``time.monotonic()``: one clock for every process on the machine (Linux CLOCK_MONOTONIC).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt

from bench.e2e_gateway import output_keys
from gateway.deliver.mqtt import MqttPublisher
from gateway.ingest.client import connect_async, new_client, parse_broker_url
from gateway.ingest.source import MqttSource
from gateway.pipeline.decode import decode_records
from simulators.fleet import Fleet, FleetConfig, Message
from simulators.publish import Publisher

SUBSCRIBER_RECEIVE_MAXIMUM = 1000
RELAY_BATCH = 500  # envelopes taken from the input queue at once
RELAY_WAIT_S = 0.005  # longest wait to fill a batch: the relay adds no batching latency
FLEET_SECONDS = 36_000.0  # long enough for any run; messages are generated lazily


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of process ``pid`` in MiB, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time process ``pid`` has used so far, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _msg_id(payload: bytes) -> list[str | None]:
    try:
        value = orjson.loads(payload).get("msg_id")
    except (orjson.JSONDecodeError, AttributeError):
        return [None]
    return [value if isinstance(value, str) else None]


KEYS: dict[str, Callable[[bytes], list[str | None]]] = {"msg_id": _msg_id, "view": output_keys}
"""How a subscriber keys what it receives, one key per output it carries: ``msg_id`` (the
input's own id, carried by raw and relayed copies) or ``view`` (``subscriber/message_id`` of
each gateway view, alone or in a batch)."""


# -- load generator -----------------------------------------------------------------------


def publisher_main(
    conn: Connection,
    vehicles: int,
    seed: int,
    start: datetime,
    max_inflight: int,
    sample_period_s: float = 1.0,
) -> None:
    """Serve commands: ``("prepare", n)`` generates the first ``n`` messages;
    ``("connect", url)``; ``("run", first, count, rate)`` publishes messages
    ``[first, first+count)`` (``rate`` msgs/s, or None for as fast as confirmed) and answers
    ``(send_times, msg_ids, record_times, confirmed, end_time)`` once every PUBACK arrived
    (``record_times``: each record's timestamp as the gateway reads it, Unix seconds);
    ``("disconnect",)``; ``("stop",)``. Each vehicle sends a sample every
    ``sample_period_s`` seconds of its driving."""
    fleet = Fleet(FleetConfig(vehicles=vehicles, start=start), seed)
    stream = fleet.messages(duration=FLEET_SECONDS, rate=1.0 / sample_period_s)
    cache: list[Message] = []
    ids: list[str] = []
    stamps: list[float] = []

    def ensure(n: int) -> None:
        docs = []
        while len(cache) < n:
            msg = next(stream)
            cache.append(msg)
            docs.append(orjson.loads(msg.payload))
        ids.extend(doc["msg_id"] for doc in docs)
        stamps.extend(decode_records(docs).time.tolist() if docs else [])

    publisher: Publisher | None = None
    while True:
        cmd, *args = conn.recv()
        try:
            if cmd == "prepare":
                ensure(int(args[0]))
                conn.send(("ok", len(cache)))
            elif cmd == "connect":
                publisher = Publisher(
                    args[0],
                    protocol="5",
                    max_inflight=max_inflight,
                    client_id=f"bench-load-{os.getpid()}",
                )
                publisher.connect()
                conn.send(("ok",))
            elif cmd == "run":
                assert publisher is not None, "connect first"
                first, count, rate = int(args[0]), int(args[1]), args[2]
                ensure(first + count)
                times = _publish(publisher, cache[first : first + count], rate)
                publisher.flush()
                conn.send(
                    (
                        "ok",
                        times,
                        ids[first : first + count],
                        stamps[first : first + count],
                        publisher.stats.messages,
                        time.monotonic(),
                    )
                )
            elif cmd == "disconnect":
                if publisher is not None:
                    publisher.close()
                    publisher = None
                conn.send(("ok",))
            elif cmd == "stop":
                if publisher is not None:
                    publisher.close()
                conn.send(("ok",))
                return
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _publish(publisher: Publisher, messages: Sequence[Message], rate: float | None) -> Any:
    """Publish ``messages``; return their send times. Paced: message ``k`` no earlier than
    ``k / rate`` seconds after the first."""
    times = np.empty(len(messages))
    clock = time.monotonic
    start = clock()
    for k, msg in enumerate(messages):
        if rate:
            wait = start + k / rate - clock()
            if wait > 0:
                time.sleep(wait)
        times[k] = clock()
        publisher.publish(msg)
    return times


# -- subscribers --------------------------------------------------------------------------


def subscriber_main(
    conn: Connection,
    url: str,
    filters: Sequence[str],
    key: str,
    client_id: str,
    count: Synchronized,  # type: ignore[type-arg]
    messages: Synchronized | None = None,  # type: ignore[type-arg]
) -> None:
    """Subscribe to ``filters`` at QoS 1 (clean session) and record arrivals; ``count`` is
    the running number of outputs (views) received, ``messages`` that of MQTT messages
    (fewer when views come in batches). Answers ``("ready",)`` once subscribed, then
    serves ``("collect",)`` -> ``(arrival_times, keys)`` since the last collect, and
    ``("stop",)``."""
    extract = KEYS[key]
    lock = threading.Lock()
    times: list[float] = []
    keys: list[str | None] = []
    subscribed = threading.Event()
    spec = parse_broker_url(url, protocol="5")
    client = new_client(spec, client_id, persistent=False)
    clock = time.monotonic

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe([(f, 1) for f in filters])

    def on_subscribe(_c: mqtt.Client, _u: Any, _m: int, codes: Any, _p: Any) -> None:
        if not any(code.is_failure for code in codes):
            subscribed.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        t = clock()
        ks = extract(bytes(msg.payload))
        with lock:
            times.extend([t] * len(ks))
            keys.extend(ks)
        count.value += len(ks)
        if messages is not None:
            messages.value += 1

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    connect_async(client, spec, persistent=False, receive_maximum=SUBSCRIBER_RECEIVE_MAXIMUM)
    client.loop_start()
    if not subscribed.wait(15):
        conn.send(("error", f"{client_id}: not subscribed to {list(filters)} within 15 s"))
        client.loop_stop()
        return
    conn.send(("ready",))
    while True:
        cmd, *_ = conn.recv()
        if cmd == "collect":
            with lock:
                out_t, out_k = np.array(times), list(keys)
                times.clear()
                keys.clear()
            conn.send(("ok", out_t, out_k))
        elif cmd == "stop":
            client.disconnect()
            client.loop_stop()
            conn.send(("ok", peak_rss_mb(os.getpid())))
            return


# -- zero-work relay ----------------------------------------------------------------------


class _Pending:
    """One input waiting for its copies to be confirmed."""

    __slots__ = ("ack", "failed", "left", "lock")

    def __init__(self, copies: int, ack: Callable[[], None] | None) -> None:
        self.left = copies
        self.ack = ack
        self.failed = False
        self.lock = threading.Lock()

    def done(self, ok: bool) -> None:
        with self.lock:
            self.left -= 1
            self.failed |= not ok
            last = self.left == 0
        # A failed copy leaves the input unacknowledged: the broker redelivers it.
        if last and not self.failed and self.ack is not None:
            self.ack()


def relay_main(
    conn: Connection,
    url: str,
    subscribers: Sequence[str],
    input_topic: str,
    queue_bound: int,
    max_inflight: int,
) -> None:
    """Run the zero-work relay until ``("stop",)``; answers ``("ready",)`` once subscribed
    and ``("ok", relayed_inputs, peak_rss_mb)`` when stopped."""
    spec = parse_broker_url(url, protocol="5")
    source = MqttSource(spec, input_topic, client_id="bench-relay-in", queue_bound=queue_bound)
    out = MqttPublisher(spec, "bench-relay-out", max_inflight=max_inflight)
    out.start()
    source.start()
    if not (out.wait_connected(15) and source.wait_connected(15)):
        conn.send(("error", "relay: not connected and subscribed within 15 s"))
        return
    conn.send(("ready",))
    relayed = 0
    copies = len(subscribers)
    while not conn.poll():
        for env in source.get_batch(RELAY_BATCH, RELAY_WAIT_S):
            vehicle = env.topic.split("/")[1]
            pending = _Pending(copies, env.ack)
            for sub in subscribers:
                out.publish(f"share/{sub}/{vehicle}/telemetry", env.payload, pending.done)
            relayed += 1
    conn.recv()
    out.flush(10.0)
    source.stop()
    out.stop()
    conn.send(("ok", relayed, peak_rss_mb(os.getpid())))
