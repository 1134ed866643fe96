"""Peer: a webhook handler written the way OpenAI's SIP guide writes one.

The official `openai` SDK verifies the delivery (`client.webhooks.unwrap`) and accepts the
call (`client.realtime.calls.accept`), on FastAPI/uvicorn. It routes nothing, records
nothing and dedupes nothing: the floor a router is compared against.
Run: `uvicorn bench.e2e.peer_openai:app` with OPENAI_API_KEY, OPENAI_BASE_URL and
OPENAI_WEBHOOK_SECRET set.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from openai import AsyncOpenAI, InvalidWebhookSignatureError

client = AsyncOpenAI()  # OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_WEBHOOK_SECRET
app = FastAPI()


@app.post("/webhooks/openai")
async def webhook(request: Request) -> Response:
    body = await request.body()
    try:
        event = client.webhooks.unwrap(body, request.headers)
    except InvalidWebhookSignatureError:
        return Response("invalid signature", status_code=400)
    if event.type == "realtime.call.incoming":
        await client.realtime.calls.accept(
            event.data.call_id,
            type="realtime",
            model="gpt-realtime",
            instructions="You are a support agent. Keep answers short.",
        )
    return Response(status_code=200)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
