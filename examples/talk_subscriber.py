"""The talk's consumer design on Google's official Python client, for the broker
benchmark: a streaming pull whose callback hands each message to an asyncio loop, which
saves it and restarts its host at the same time (both without delay here) and then acks.
With --streams N, N streaming pulls share the subscription. Prints one JSON line.

The client finds the emulator through PUBSUB_EMULATOR_HOST.
"""

import argparse
import asyncio
import json
import threading
import time

from google.cloud import pubsub_v1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscription", required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    done = threading.Event()
    handled = 0

    async def save(message):
        await asyncio.sleep(0)

    async def restart_host(message):
        await asyncio.sleep(0)

    async def handle(message):
        nonlocal handled
        json.loads(message.data)
        await asyncio.gather(save(message), restart_host(message))
        message.ack()
        handled += 1
        if handled >= args.messages:
            done.set()

    def callback(message):
        asyncio.run_coroutine_threadsafe(handle(message), loop)

    subscriber = pubsub_v1.SubscriberClient()
    flow = pubsub_v1.types.FlowControl(max_messages=1000)
    started = time.monotonic()
    pulls = [
        subscriber.subscribe(args.subscription, callback, flow_control=flow)
        for _ in range(args.streams)
    ]
    done.wait(timeout=600)
    elapsed = time.monotonic() - started
    for pull in pulls:
        pull.cancel()
    print(
        json.dumps(
            {
                "streams": args.streams,
                "handled": handled,
                "elapsed_s": elapsed,
                "msgs_per_s": handled / elapsed,
            }
        )
    )


if __name__ == "__main__":
    main()
