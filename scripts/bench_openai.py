#!/usr/bin/env python3
"""Time to first token: the OpenAI-compatible API (`model: "coach"`, streamed) against the chat
page's stream (SSE on /api/v1/conversations/{id}/messages), on the same questions and server.

The server is started on a fresh data directory with the answers benchmark's documents
(scripts/answers/), the coach at temperature 0. Every question is asked on both paths in a new
conversation; the order alternates per question, so neither path always finds the other's
prompt prefix cached. Measured on the client: seconds to the first piece of answer text (a
`delta` event on the chat page, a chunk with `delta.content` on /v1) and to the end.

usage: scripts/bench-openai [--binary PATH] [--threads N] [--limit N]
Prints one line per question and a summary with medians and the API/page ratio.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_answers import (REQUEST_TIMEOUT, ask_streaming, load_questions, set_coach,
                           start_server, teach_documents)
from eval_retrieval import Api, free_port


def ask_openai(api, question):
    """Streams one /v1/chat/completions answer from the coach. Returns (first s, total s)."""
    api.fresh_token()
    body = json.dumps({"model": "coach", "stream": True,
                       "messages": [{"role": "user", "content": question}]}).encode()
    request = urllib.request.Request(
        f"{api.base}/v1/chat/completions", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api.token}"})
    started = time.perf_counter()
    first = None
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise SystemExit(f"/v1 stream failed: {chunk}")
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


def ask_page(api, question):
    _, conversation = api.call("POST", "/api/v1/conversations", {})
    first, total, _, _, error = ask_streaming(api, conversation["id"], question)
    if error:
        raise SystemExit(f"chat page stream failed: {error}")
    return first, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    models = os.environ.get("COMPANERO_TEST_MODELS", str(Path.home() / ".cache/companero/test-models"))
    parser.add_argument("--binary", default=f"{target}/release/companero")
    parser.add_argument("--embedder", default=f"{models}/all-minilm-l6-v2")
    parser.add_argument("--llm", default=f"{models}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--limit", type=int, default=12, help="questions to ask [default: 12]")
    args = parser.parse_args()

    documents, in_scope, _, _ = load_questions(args.limit)
    work = Path(tempfile.mkdtemp(prefix="companero-openai-"))
    port = free_port()
    with open(work / "server.log", "w") as log:
        server = start_server(args, work, port, log)
        try:
            api = Api(f"http://127.0.0.1:{port}")
            teach_documents(api, server, documents)
            set_coach(api, "")
            # Warm both paths before anything is timed.
            ask_page(api, "Hello!")
            ask_openai(api, "Hello!")
            rows = []
            for index, item in enumerate(in_scope):
                question = item["question"]
                paths = [("page", ask_page), ("api", ask_openai)]
                if index % 2:
                    paths.reverse()
                row = {"question": question, "first_path": paths[0][0]}
                for name, ask in paths:
                    row[name] = ask(api, question)
                rows.append(row)
                print(f"page first {fmt(row['page'][0])} total {row['page'][1]:.2f} s | "
                      f"api first {fmt(row['api'][0])} total {row['api'][1]:.2f} s | {question}",
                      flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)

    def median(name, i, asked_first=None):
        values = [r[name][i] for r in rows if r[name][i] is not None
                  and (asked_first is None or (r["first_path"] == name) == asked_first)]
        return statistics.median(values) if values else None

    # The second path to ask a question finds most of its prompt cached, so the figures are
    # also split by order.
    print(f"\n{len(rows)} questions, {args.threads} threads, {Path(args.llm).name}")
    print("| path | first answer text, median s | asked first | asked second | whole answer, median s |")
    print("|---|---|---|---|---|")
    for name, label in (("page", "chat page (SSE)"), ("api", "/v1/chat/completions, coach, stream")):
        print(f"| {label} | {fmt(median(name, 0))} | {fmt(median(name, 0, True))} | "
              f"{fmt(median(name, 0, False))} | {fmt(median(name, 1))} |")
    page, api_first = median("page", 0), median("api", 0)
    if page and api_first:
        print(f"\nfirst answer text, API / page: {api_first / page:.2f}")


def fmt(value):
    return "–" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
