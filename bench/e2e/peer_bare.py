"""Peer: a bare FastAPI + standardwebhooks + httpx handler that accepts every call.

Run: `uvicorn bench.e2e.peer_bare:app` with OPENAI_API_KEY, OPENAI_BASE_URL and
OPENAI_WEBHOOK_SECRET set.
"""

from __future__ import annotations

import os

import httpx
from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

verifier = Webhook(os.environ["OPENAI_WEBHOOK_SECRET"])
http = httpx.AsyncClient(
    base_url=os.environ["OPENAI_BASE_URL"],
    headers={"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"},
)
app = FastAPI()

SESSION = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "You are a support agent. Keep answers short.",
}


@app.post("/webhooks/openai")
async def webhook(request: Request) -> Response:
    body = await request.body()
    try:
        event = verifier.verify(body, dict(request.headers))
    except WebhookVerificationError:
        return Response("invalid signature", status_code=400)
    if event["type"] == "realtime.call.incoming":
        call_id = event["data"]["call_id"]
        response = await http.post(f"/realtime/calls/{call_id}/accept", json=SESSION)
        if response.status_code >= 300:
            return Response(status_code=503)
    return Response(status_code=200)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
