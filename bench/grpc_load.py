"""`hey` for the gRPC door: N clients send one already-serialised `ModelInfer` request for S seconds.

Run as its own process by `traffic.grpc_load` (so that its event loop and GIL are not the bench's).
Like `hey` with a body file, it neither builds nor parses a message per call: the request's bytes go
out as they are (grpc's identity serialiser) and the answer's bytes are only counted, so the client
takes little of the CPU being measured. Each client has its own channel (its own HTTP/2 connection,
as `hey`'s clients have their own TCP connections). Prints one JSON object: requests, ok, and each
answered call's (offset, seconds), from which `traffic.grpc_load` computes what `hey()` reports.

    python bench/grpc_load.py 127.0.0.1:8001 request.bin 32 10
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def main(address: str, body: bytes, clients: int, seconds: float) -> dict:
    start = time.perf_counter()
    stop = start + seconds
    answered: list[tuple[float, float]] = []
    failed = 0

    async def client(i: int) -> None:
        nonlocal failed
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            call = channel.unary_unary(METHOD)  # bytes in, bytes out
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await call(body, timeout=60)
                except grpc.aio.AioRpcError:
                    failed += 1
                    continue
                answered.append((t0 - start, time.perf_counter() - t0))

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {"requests": len(answered) + failed, "ok": len(answered), "answered": answered}


if __name__ == "__main__":
    address, path, clients, seconds = sys.argv[1:5]
    out = asyncio.run(main(address, Path(path).read_bytes(), int(clients), float(seconds)))
    print(json.dumps(out))
