"""The two servers the service is compared with, each one FastAPI app on uvicorn (as the service):

* ``naive``: what users would write first - the model run once per request, no batching, no cache
  (a plain ``def`` endpoint, so FastAPI runs it in its thread pool). The cold path's baseline.
* ``bare``: a POST endpoint that reads the body and returns fixed bytes of the service's response
  size, doing no work at all. The hot path's limit: what HTTP + FastAPI + uvicorn cost by themselves.

Run: ``python -m loadtest.reference_servers naive --artifact DIR --port P`` or
``python -m loadtest.reference_servers bare --payload FILE --port P``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from artifact.loader import load_artifact
from service.model.onnx_session import open_session


class NaiveItem(BaseModel):
    id: str | None = None
    text: str


class NaiveRequest(BaseModel):
    items: list[NaiveItem]


def naive_app(artifact_dir: Path) -> FastAPI:
    artifact = load_artifact(artifact_dir)
    session = open_session(artifact)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/embed")
    def embed(body: NaiveRequest) -> dict[str, object]:
        feed = artifact.tokenize([item.text for item in body.items])
        (vectors,) = session.run(["embedding"], feed)
        return {
            "model": artifact.name,
            "data": [
                {"id": item.id, "embedding": vector.tolist(), "cached": False}
                for item, vector in zip(body.items, vectors, strict=True)
            ],
        }

    return app


def bare_app(payload: bytes) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/embed")
    async def embed(request: Request) -> Response:
        await request.body()
        return Response(payload, media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.reference_servers")
    parser.add_argument("kind", choices=["naive", "bare"])
    parser.add_argument("--artifact", type=Path, help="artifact directory (naive)")
    parser.add_argument("--payload", type=Path, help="file whose bytes every answer carries (bare)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.kind == "naive":
        if args.artifact is None:
            parser.error("naive needs --artifact")
        app = naive_app(args.artifact)
    else:
        if args.payload is None:
            parser.error("bare needs --payload")
        app = bare_app(args.payload.read_bytes())
    # Same server settings as `marc serve`: one worker, no access log (uvloop/httptools when installed).
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
