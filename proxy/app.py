"""The OpenAI-compatible server. Read top to bottom: app setup, then one handler per route.

A request flows one way: handler (parse, check) -> router (model, mode, device link)
-> link (request held for its upload time) -> backend (token events) -> meter (every
token timed) -> link (each chunk released at its simulated arrival) -> client.

When nothing on the way rewrites or paces a stream's chunks (a streaming client, a downlink
with no delay to simulate, an upstream backend), the backend relays the upstream's own SSE
bytes instead of events: the same flow, with frames the proxy forwards instead of encoding.
"""
from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import logging
import time

import orjson
from aiohttp import web

from backends import BackendError, GenRequest
from backends.base import Finish, Scheduled, TextDelta, ToolCallDelta, Usage
from backends.upstream import Relay

from proxy import metrics
from proxy import openapi
from proxy import validate
from proxy.config import MODE_PLACEMENT, Config
from proxy.device import Devices, settle
from proxy.energy import ComputeEnergy
from proxy.errors import APIError, bad_request
from proxy.info import Info
from proxy.meter import NetTally, RequestLog, RequestMeter, Timeline
from proxy.profiles import device_energy
from proxy.router import Route, Router, build_models, engines

log = logging.getLogger("edgemeter")
CONFIG, ROUTER, LOG, ENERGY = web.AppKey("config", Config), web.AppKey("router", Router), \
    web.AppKey("log", RequestLog), web.AppKey("energy", ComputeEnergy)
LOADING = web.AppKey("loading", list)
INFO = web.AppKey("info", Info)
API_PATHS = ("/v1/", "/edgemeter/")
VERSION = importlib.metadata.version("edgemeter")


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[errors_and_auth])
    app[CONFIG] = config
    app[ROUTER] = Router(config, build_models(config), Devices.from_config(config))
    app[LOG] = RequestLog(config.server.request_log)
    app[ENERGY] = ComputeEnergy.from_config(config.energy)
    app[INFO] = Info(config, engines(app[ROUTER].models), app[ROUTER].devices.presets, app[ENERGY])
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/edgemeter/v1/sessions/{session_id}/end", end_session)
    app.router.add_get("/edgemeter/v1/info", info)
    app.router.add_post("/edgemeter/v1/devices/{device_id}/reset", reset_device)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # the routes benchmark clients and orchestrators probe on vLLM/SGLang servers (docs/peer-clients.md)
    app.router.add_get("/health", health)
    app.router.add_get("/ping", health)
    app.router.add_get("/version", version)
    app.router.add_get("/openapi.json", openapi.serve)
    app.on_startup.append(start_backends)
    app.on_cleanup.append(stop_backends)
    return app


async def start_backends(app: web.Application) -> None:
    """Load models in the background so /healthz answers at once and /readyz says 503 until done."""
    async def load(name, served):
        try:
            await served.backend.start()
            metrics.BACKEND_READY.labels(name, served.backend.kind, served.key).set(1)
        except Exception as e:  # a model that fails to load stays not-ready; the others still serve
            log.error("model %s failed to load: %s", served.key, e)
    app[LOADING] = [asyncio.create_task(load(n, s)) for n, s in engines(app[ROUTER].models)]
    app[INFO].start()  # hash the weights once, beside the loading


async def stop_backends(app: web.Application) -> None:
    for task in (*app[LOADING], *app[INFO].hashing.values()):
        task.cancel()
    for _, served in engines(app[ROUTER].models):
        await served.backend.close()
    app[LOG].close()


@web.middleware
async def errors_and_auth(request: web.Request, handler):
    """API key check and the last line of defence: every failure leaves as an OpenAI error."""
    config = request.app[CONFIG]
    try:
        key = config.server.api_key
        if key and (request.path.startswith(API_PATHS) or (request.path == "/metrics" and config.server.metrics_auth)):
            given = request.headers.get("Authorization", "")
            # surrogateescape: aiohttp keeps a header's non-UTF-8 bytes as lone surrogates
            if not hmac.compare_digest(given.encode(errors="surrogateescape"), f"Bearer {key}".encode()):
                raise APIError(401, "Incorrect API key provided", type="authentication_error",
                               code="invalid_api_key")
        return await handler(request)
    except APIError as e:
        return e.response()
    except web.HTTPRequestEntityTooLarge:
        return APIError(413, f"request body exceeds {config.server.max_body_bytes} bytes",
                        code="request_too_large").response()
    except web.HTTPException as e:  # 404/405 from routing
        response = APIError(e.status, e.reason, code=str(e.status)).response()
        if "Allow" in e.headers:  # a 405 must say which methods the route has (RFC 9110)
            response.headers["Allow"] = e.headers["Allow"]
        return response
    except ConnectionResetError:  # the client left mid-response: no one to answer, and no error to log
        return web.Response(status=499)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s", request.path)
        return APIError(500, "internal error in the proxy", type="server_error", code="internal_error").response()


# --- OpenAI API ---

async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, "completion")


async def read_json(request: web.Request) -> tuple[dict, int]:
    if request.content_type != "application/json":
        raise APIError(415, f"Content-Type must be application/json, got {request.content_type!r}",
                       code="unsupported_media_type")
    timeout = request.app[CONFIG].server.body_timeout_s
    try:
        if request.content.is_eof():  # the usual case: the whole body came with the headers
            raw = await request.read()
        else:  # aiohttp would wait forever for the rest: a client that stops sending would hold the handler
            raw = await asyncio.wait_for(request.read(), timeout)
    except asyncio.TimeoutError:
        raise APIError(408, f"request body not received within {timeout:g} s", code="request_timeout") from None
    except (ConnectionResetError, web.RequestPayloadError) as e:  # cut short, or a broken gzip/chunked encoding
        raise bad_request(f"request body could not be read: {e}", None, "invalid_body") from None
    try:
        return orjson.loads(raw), len(raw)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"request body is not valid JSON: {e}", None, "invalid_json") from None


async def generate(request: web.Request, kind: str) -> web.StreamResponse:
    t_received = time.perf_counter()
    body, nbytes = await read_json(request)
    (validate.chat if kind == "chat" else validate.completion)(body)
    route = request.app[ROUTER].route(request.headers, body["model"], body)
    meter = RequestMeter(*route.labels, route.device_id, route.session and route.session.id, t_received, nbytes,
                         route.served.record)
    # compute energy follows placement: the device's only when the model runs as the device's, in-process
    if route.served.placement == "device" and route.backend.in_process:
        meter.energy = request.app[ENERGY]
    stream = body.get("stream", False)
    response = None
    try:
        if route.up:  # the request crosses the device link before the cloud sees it
            await sleep_until(route.up.send("up", time.perf_counter(), nbytes, meter.net))
        meter.backend_started(time.perf_counter())
        req = GenRequest(kind, route.model, body)
        if relays(request, route, stream):
            events = route.backend.generate(req, relay=True)
        else:
            events = route.backend.generate(req)
        if stream:
            events = await primed(events)  # failures before the first token keep their HTTP status
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                   "X-Request-Id": meter.request_id})
            await response.prepare(request)
            await stream_events(request, response, route, meter, events, kind, body)
            return response
        return await complete(request, route, meter, events, kind)
    except (ConnectionResetError, asyncio.CancelledError):
        finish(request, route, meter, 499, "client_disconnected")  # nginx's code for "client closed request"
        raise
    except Exception as e:
        if isinstance(e, APIError):
            err = e
        elif isinstance(e, BackendError):
            err = APIError(e.status, e.message, type=e.type, param=e.param, code=e.code, cause=e.cause)
        else:  # a bug: still an OpenAI error (an SSE event once streaming) and the request's books closed
            log.exception("unhandled error on %s", request.path)
            err = APIError(500, "internal error in the proxy", type="server_error", code="internal_error")
        record = finish(request, route, meter, err.status, err.cause)
        if response is None:
            return err.response()
        # Headers are gone: an SSE error event, which the openai client raises as APIError.
        await response.write(b"data: " + orjson.dumps({**err.body(), "edgemeter": record}) + b"\n\n")
        return response


def relays(request: web.Request, route: Route, stream: bool) -> bool:
    """Whether the upstream's SSE bytes can go to the client as they came: the client streams,
    the backend can relay, the downlink has no delay to simulate frame by frame and no trace
    wants each frame's own timing."""
    server = request.app[CONFIG].server
    return (stream and route.backend.relays and server.passthrough and not server.record_traces
            and (route.down is None or route.down.link.instant("down")))


async def primed(events):
    """Read ahead to the first event the client will see, then replay everything read.
    An upstream refusal, 4xx/5xx or a prompt too long for the context surfaces here, while
    the response can still carry the right status instead of an in-stream error event."""
    head = []
    try:
        async for ev in events:
            head.append(ev)
            if isinstance(ev, (TextDelta, ToolCallDelta, Finish, Relay)):
                break
    except BaseException:
        await events.aclose()
        raise

    async def replay():
        try:
            for ev in head:
                yield ev
            async for ev in events:
                yield ev
        finally:
            await events.aclose()
    return replay()


def finish(request: web.Request, route: Route, meter: RequestMeter, status: int, cause: str | None) -> dict:
    if meter.t_end is not None:
        return {}
    meter.close_energy(time.perf_counter())
    record = meter.finish(status, cause)
    record.update(request.app[ENERGY].cloud_cost(route.model, route.mode, meter.prompt_tokens, meter.completion_tokens))
    if route.auto:  # mode is what was routed; this says that a policy chose it, and why
        record["auto"] = route.auto
    if meter.timeline is not None:
        record["trace"] = meter.trace(route.backend.in_process)
    if route.session:
        route.session.add(record, meter.net.charge, route.up or route.down)
    request.app[LOG].write(record)
    return record


def metered(meter: RequestMeter, ev) -> tuple[int, bool] | None:
    """Meter one backend event; for one the client sees, its (tokens, is answer), else None."""
    if isinstance(ev, TextDelta):
        meter.produced(ev.t, not ev.reasoning, ev.tokens)
        return ev.tokens, not ev.reasoning
    if isinstance(ev, ToolCallDelta):
        meter.produced(ev.t)
        return ev.tokens, True
    if isinstance(ev, Usage):
        meter.prompt_tokens, meter.completion_tokens, meter.usage_source = ev.prompt_tokens, ev.completion_tokens, ev.source
        meter.cpu_s = ev.cpu_s
        if ev.reasoning_tokens is not None:  # else the reasoning deltas' own counts stand
            meter.reasoning_tokens = ev.reasoning_tokens
    elif isinstance(ev, Scheduled):
        meter.scheduled(ev.t)
    elif isinstance(ev, Finish):
        meter.finish_reason = ev.reason
        return 0, False
    return None


class Chunks:
    """OpenAI chunk bytes. The fixed part of each chunk is encoded once per stream; only the
    delta is encoded per token."""

    def __init__(self, kind: str, model: str, request_id: str, include_usage: bool):
        self.kind = kind
        self.tail = (b',"usage":null' if include_usage else b"") + b"}\n\n"
        self.role_sent = False
        self.relayed = False
        self._heads(request_id, int(time.time()), model)

    def _heads(self, request_id: str, created: int, model: str) -> None:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        self.head = b'data: {"id":' + orjson.dumps(request_id) + b',"object":"' + obj.encode() + \
            b'","created":' + str(created).encode() + b',"model":' + orjson.dumps(model) + b',"choices":['
        # A plain text delta, the chunk nearly every token makes, spliced around the encoded text:
        # the same bytes as encoding its choice object, without building one per token.
        chat = self.kind == "chat"
        self.text_head = self.head + (b'{"index":0,"delta":{"content":' if chat else b'{"index":0,"text":')
        self.text_tail = (b'}' if chat else b"") + b',"logprobs":null,"finish_reason":null}]' + self.tail

    def adopt(self, relayed: bytes) -> None:
        """Once the upstream's own chunks go out, the proxy's (a finish the upstream left out, the
        usage) carry their id, created and model, and no second role: one completion to the client."""
        self.relayed = self.role_sent = True
        try:
            first = orjson.loads(relayed[relayed.index(b"data:") + 5:].split(b"\n", 1)[0])
            self._heads(str(first["id"]), int(first["created"]), str(first["model"]))
        except (ValueError, KeyError, TypeError):  # an upstream without them keeps the proxy's
            pass

    def _choice(self, delta: dict, finish: str | None = None) -> bytes:
        if self.kind == "chat":
            if not self.role_sent:
                delta = {"role": "assistant", **delta}
                self.role_sent = True
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
        return self.head + orjson.dumps(choice) + b"]" + self.tail

    def text(self, text: str, reasoning: bool = False) -> bytes:
        if reasoning and self.kind == "chat":
            return self._choice({"reasoning_content": text})
        if self.role_sent or self.kind != "chat":
            return self.text_head + orjson.dumps(text) + self.text_tail
        return self._choice({"content": text})

    def tool_call(self, ev: ToolCallDelta) -> bytes:
        call: dict = {"index": ev.index}
        if ev.id:
            call["id"], call["type"] = ev.id, "function"
        fn = {"arguments": ev.arguments}
        if ev.name:
            fn = {"name": ev.name, **fn}
        call["function"] = fn
        return self._choice({"tool_calls": [call]})

    def finish(self, reason: str) -> bytes:
        return self._choice({}, reason)

    def event(self, ev) -> bytes:
        if isinstance(ev, TextDelta):
            return self.text(ev.text, ev.reasoning)
        return self.tool_call(ev) if isinstance(ev, ToolCallDelta) else self.finish(ev.reason)

    def usage(self, meter: RequestMeter) -> bytes:
        return self.head + b"]," + b'"usage":' + orjson.dumps(usage(meter)) + b"}\n\n"


def usage(meter: RequestMeter) -> dict:
    return {"prompt_tokens": meter.prompt_tokens, "completion_tokens": meter.completion_tokens,
            "total_tokens": meter.prompt_tokens + meter.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": meter.reasoning_tokens}}


async def sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


PLAIN = ((1, True),)  # a relayed plain content frame: one answer token


async def frames(events, chunks: Chunks, meter: RequestMeter):
    """Backend events -> (sse bytes, produced at, parts): ``parts`` holds (tokens, is answer) for
    each OpenAI chunk in the bytes. Bookkeeping events yield no frame; relayed bytes go out as
    the upstream sent them. Closing this generator closes the backend's, which cancels its work."""
    try:
        async for ev in events:
            if isinstance(ev, Relay):
                if not chunks.relayed:
                    chunks.adopt(ev.data)
                if ev.events is None:
                    meter.produced(ev.t, True, ev.tokens)
                    yield ev.data, ev.t, PLAIN * ev.tokens
                else:
                    yield ev.data, ev.t, [part for e in ev.events if (part := metered(meter, e)) is not None]
            elif (part := metered(meter, ev)) is not None:
                yield chunks.event(ev), ev.t, (part,)
    finally:
        await events.aclose()


async def paced(source, route: Route, meter: RequestMeter, buffer: int):
    """Release each frame at its simulated arrival time over the device's downlink, in
    batches: the frames due at the same moment.

    Arrival times depend on when the backend produced each frame, so a pump task reads
    the backend while earlier frames wait out their delay; the bounded queue pauses the
    backend when a slow reader falls ``buffer`` frames behind.
    """
    if route.down is None or route.down.link.instant("down"):  # due within microseconds: no pacing task
        async for frame in source:
            if route.down is not None:
                await sleep_until(route.down.send("down", frame[1], len(frame[0]), meter.net))
            yield (frame,)
        return
    queue: asyncio.Queue = asyncio.Queue(buffer)

    async def pump():
        try:
            async for data, t, parts in source:
                await queue.put((data, route.down.send("down", t, len(data), meter.net), parts))
            await queue.put(None)
        except Exception as e:  # not its own cancellation: putting that into a full queue would never return
            await queue.put(e)
    task = asyncio.create_task(pump())
    nothing = object()
    held = nothing
    try:
        while (item := await queue.get() if held is nothing else held) is not None:
            held = nothing
            if isinstance(item, BaseException):
                raise item
            await sleep_until(item[1])
            batch = [item]
            # Frames already queued and already due leave with it: one write, one wake-up of the client.
            while not queue.empty():
                held = queue.get_nowait()
                if held is None or isinstance(held, BaseException) or held[1] > time.perf_counter():
                    break
                batch.append(held)
                held = nothing
            yield batch
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await source.aclose()


async def stream_events(request, response, route: Route, meter: RequestMeter, events, kind: str, body: dict):
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks = Chunks(kind, route.model, meter.request_id, include_usage)
    source = frames(events, chunks, meter)
    if request.app[CONFIG].server.record_traces:
        source = meter.tapped(source)
    t0 = time.perf_counter()
    meter.backend_started(t0)
    batches = paced(source, route, meter, request.app[CONFIG].server.max_stream_buffer)
    try:
        async for batch in batches:
            data = batch[0][0] if len(batch) == 1 else b"".join([frame[0] for frame in batch])
            await response.write(data)
            meter.bytes_down += len(data)
            t = time.perf_counter()
            for frame in batch:
                for tokens, answer in frame[2]:
                    meter.delivered(t, tokens, answer)
    finally:
        # paced first: it stops its pump task, which may be inside the source (closing a generator
        # another task is running raises); a failed write leaves it open otherwise, for the GC
        await batches.aclose()
        await source.aclose()
    record = finish(request, route, meter, 200, None)
    if include_usage:
        # The record rides on the usage chunk; it is a measurement, not simulated traffic.
        await response.write(chunks.usage(meter)[:-3] + b',"edgemeter":' + orjson.dumps(record) + b"}\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()


async def complete(request, route: Route, meter: RequestMeter, events, kind: str) -> web.Response:
    meter.backend_started(time.perf_counter())
    if request.app[CONFIG].server.record_traces:
        meter.timeline = Timeline(stream=False)
    text, thought, calls = [], [], {}
    try:
        async for ev in events:
            metered(meter, ev)
            if isinstance(ev, TextDelta):
                (thought if ev.reasoning else text).append(ev.text)
            elif isinstance(ev, ToolCallDelta):
                call = calls.setdefault(ev.index, {"id": ev.id, "type": "function",
                                                   "function": {"name": ev.name or "", "arguments": ""}})
                call["id"] = call["id"] or ev.id
                call["function"]["name"] = call["function"]["name"] or ev.name or ""
                call["function"]["arguments"] += ev.arguments
    finally:
        await events.aclose()  # a client that left cancels the backend's work
    content = "".join(text)
    if kind == "chat":
        message = {"role": "assistant", "content": content or (None if calls else "")}
        if thought:
            message["reasoning_content"] = "".join(thought)
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": meter.finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": meter.finish_reason}
        obj = "text_completion"
    out = {"id": meter.request_id, "object": obj, "created": int(time.time()), "model": route.model,
           "choices": [choice], "usage": usage(meter)}
    payload = orjson.dumps(out)
    if meter.timeline is not None:  # the whole body is one frame, sent when generation ends
        meter.timeline.frames.append((time.perf_counter(), len(payload), meter.completion_tokens))
    if route.down:
        await sleep_until(route.down.send("down", time.perf_counter(), len(payload), meter.net))
    meter.bytes_down = len(payload)
    if meter.t_backend_first is not None:  # non-streamed: TTFT is when the first token was made
        meter.delivered(meter.t_backend_first, 0, meter.t_backend_first == meter.t_backend_first_answer)
        meter.t_first_answer = meter.t_backend_first_answer
    meter.t_last_token = time.perf_counter()
    record = orjson.dumps(finish(request, route, meter, 200, None))
    headers = {"X-Request-Id": meter.request_id, "X-Edgemeter-Record": record.decode()}
    # The record rides in the body too, spliced in rather than encoding the whole answer again.
    return web.Response(body=payload[:-1] + b',"edgemeter":' + record + b"}", content_type="application/json",
                        headers=headers)


def model_card(name: str, placements: dict) -> dict:
    contexts = [getattr(s.backend, "n_ctx", None) for s in placements.values()]
    return {"id": name, "object": "model", "created": 0, "owned_by": "edgemeter", "root": name, "parent": None,
            "max_model_len": min((c for c in contexts if c), default=None),
            "placements": {p: {"backend": s.backend.kind, "served_by": s.key, "host": s.host,
                               "modes": [m for m, need in MODE_PLACEMENT.items() if need == p]}
                           for p, s in placements.items()},
            "placement_emulated": any(s.emulated for s in placements.values())}


async def list_models(request: web.Request) -> web.Response:
    """Each model with vLLM's card fields (`vllm bench serve` reads ``root``, GuideLLM ``id``) and its
    placements: which backend answers the modes that need the device or the cloud."""
    data = [model_card(name, placements) for name, placements in request.app[ROUTER].models.items()]
    return web.json_response({"object": "list", "data": data}, dumps=lambda o: orjson.dumps(o).decode())


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    placements = request.app[ROUTER].models.get(name)
    if placements is None:
        raise APIError(404, f"The model '{name}' does not exist", type="invalid_request_error", param="model",
                       code="model_not_found")
    return web.json_response(model_card(name, placements), dumps=lambda o: orjson.dumps(o).decode())


async def end_session(request: web.Request) -> web.Response:
    """Close an agent session. In cloud mode the final answer comes down the device link now."""
    body, _ = await read_json(request)
    answer = body.get("final_answer", "") if isinstance(body, dict) else None
    if not isinstance(answer, str):
        raise bad_request("'final_answer' must be a string", "final_answer", "invalid_type")
    tool_cpu_s = body.get("tool_cpu_s", 0.0)
    if isinstance(tool_cpu_s, bool) or not isinstance(tool_cpu_s, (int, float)) or not 0 <= tool_cpu_s < 1e9:
        raise bad_request("'tool_cpu_s' must be a non-negative number of seconds", "tool_cpu_s", "invalid_value")
    s = request.app[ROUTER].end_session(request.match_info["session_id"])
    out = {"session": s.id, "mode": s.mode, "network": s.network, "calls": s.calls, **s.totals}
    if s.mode == "cloud" and s.device is not None:
        tally = NetTally()
        nbytes = len(answer.encode())
        await sleep_until(s.device.send("down", time.perf_counter(), nbytes, tally))
        s.charges.append((s.device, tally.charge))
        out["bytes_down"] += nbytes
        out["net_delay_s"] += tally.added_s
        out["final_answer_delay_s"] = tally.added_s
    wall_s = time.perf_counter() - s.started
    # Exact, not projected: the reply waits until the session's last radio tail has run out
    # or been cut (see docs/energy.md), so radio_j is energy the radio really spent.
    out["radio_settle_wait_s"] = await settle(s.charges)
    out.update(s.radio())
    energy = request.app[ENERGY]
    out.update(wall_s=wall_s, tool_cpu_s=tool_cpu_s, **device_energy(
        energy.profile, s.mode, wall_s, out["compute_j"], tool_cpu_s, out["radio_j"], energy.tool_core_w))
    for part in ("baseline", "compute", "tools", "radio"):
        if out[f"{part}_j"]:
            metrics.DEVICE_ENERGY.labels(s.mode, s.network, part).inc(out[f"{part}_j"])
    return web.json_response(out, dumps=lambda o: orjson.dumps(o).decode())


async def reset_device(request: web.Request) -> web.Response:
    """Put a device back to an idle radio and fresh links without waiting out its tail: the
    harness's --cold-radio between tasks. Its pending tails are settled as run out in full."""
    out = request.app[ROUTER].devices.reset(request.match_info["device_id"], time.perf_counter())
    return web.json_response(out, dumps=lambda o: orjson.dumps(o).decode())


async def info(request: web.Request) -> web.Response:
    """Provenance: weights' hashes, engines, the effective config and the commit (proxy/info.py)."""
    return web.json_response(await request.app[INFO].document(), dumps=lambda o: orjson.dumps(o).decode())


# --- operations ---

async def metrics_endpoint(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    for name, s in engines(router.models):
        metrics.WAITING.labels(name, s.backend.kind, s.key).set(getattr(s.backend, "waiting", 0))
    router.devices.export(time.perf_counter())
    body, ctype = metrics.render()
    return web.Response(body=body, headers={"Content-Type": ctype})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def health(request: web.Request) -> web.Response:
    """vLLM's /health: 200 with an empty body once every model is loaded, 503 before."""
    ready = all(s.backend.ready for _, s in engines(request.app[ROUTER].models))
    return web.Response(status=200 if ready else 503)


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


async def readyz(request: web.Request) -> web.Response:
    state = {name: all(s.backend.ready for s in placements.values())
             for name, placements in request.app[ROUTER].models.items()}
    ok = all(state.values())
    return web.json_response({"status": "ready" if ok else "loading", "models": state}, status=200 if ok else 503)
