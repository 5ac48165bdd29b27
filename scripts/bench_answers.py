#!/usr/bin/env python3
"""Grounded answers through the real API: time to first token and total time (a cold
conversation and a follow-up), and how well citations hold up, with the SmolLM2 test model.

The document is real: "More Control Flow Tools" from the Python tutorial (Debian's
python3.11-doc, fetched by scripts/eval_retrieval.py). The questions below were written against
it; two are out of scope and should get the fallback.

Citation figures:
- model markers correct: of the [n] markers the model wrote itself, the share whose passage
  supports the sentence (the aligner's test);
- answers fully supported (after alignment): answers in which every cited sentence shares at
  least 40% of its content words with the snippet its citation quotes. This judge is stricter
  than the aligner (one quoted sentence, not the whole passage) and independent of its
  embedding test.

usage: scripts/bench-answers [--binary PATH] [--json]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_retrieval import Api, fetch_manual, free_port  # noqa: E402

QUESTIONS = [
    ("What does the range() function generate?", "Can I change the step?"),
    ("How do I leave a loop early?", "And how do I skip to the next iteration?"),
    ("What is the pass statement for?", None),
    ("When does the else clause of a for loop run?", None),
    ("How do default argument values work?", "Are they evaluated only once?"),
    ("What are keyword arguments?", None),
    ("What does a match statement do?", None),
    ("What is a lambda expression?", None),
    ("How should a docstring be formatted?", None),
    ("What is the capital of Australia?", None),
    ("Which football team won the 1998 World Cup?", None),
]
OUT_OF_SCOPE = 2

STOP = set("""the and for are but not you your with this that from they have has was were will
would can could should about into than then there their what when where which who why how all
any also its our out one may more most some such only other very just like does did been being
these those here""".split())


def words(text):
    return {w[:5] for w in re.findall(r"[A-Za-z0-9]+", text.lower()) if len(w) >= 3 and w not in STOP}


def sentences_with_markers(content):
    for sentence in re.split(r"(?<=[.!?])\s+", content):
        markers = [int(m) for m in re.findall(r"\[(\d+)\]", sentence)]
        if markers:
            yield re.sub(r"\s*\[\d+\]", "", sentence), markers


def fully_supported(message):
    snippets = {c["marker"]: c["snippet"] for c in message["citations"]}
    for sentence, markers in sentences_with_markers(message["content"]):
        claim = words(sentence)
        for marker in markers:
            if not claim or len(claim & words(snippets.get(marker, ""))) / len(claim) < 0.4:
                return False
    return True


def ask_streaming(api, conversation, content):
    """Returns (time to first delta, total time, final message)."""
    body = json.dumps({"content": content}).encode()
    request = urllib.request.Request(
        f"{api.base}/api/v1/conversations/{conversation}/messages", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api.token}"})
    started = time.perf_counter()
    first = None
    event = None
    message = None
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                if event == "delta" and first is None:
                    first = time.perf_counter() - started
                if event in ("message", "error"):
                    message = json.loads(line[5:].strip())
                    break
    return first, time.perf_counter() - started, message


def main():
    parser = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    parser.add_argument("--binary", default=f"{target}/release/companero")
    models = os.environ.get("COMPANERO_TEST_MODELS", str(Path.home() / ".cache/companero/test-models"))
    parser.add_argument("--embedder", default=f"{models}/all-minilm-l6-v2")
    parser.add_argument("--llm", default=f"{models}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    page = fetch_manual() / "tutorial/controlflow.html"
    work = Path(tempfile.mkdtemp(prefix="companero-answers-"))
    port = free_port()
    server = subprocess.Popen([
        args.binary, "serve", "--data-dir", str(work / "data"), "--bind", f"127.0.0.1:{port}",
        "--setup-token", "setup_bench-answers",
        "--embedder", args.embedder, "--llm", args.llm, "--offline", "--signup", "open",
        "--log-level", "warn", "--threads", str(args.threads), "--request-timeout-secs", "600"])
    try:
        api = Api(f"http://127.0.0.1:{port}")
        for _ in range(600):
            try:
                status, ready = api.call("GET", "/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        status, body = api.call("POST", "/api/v1/auth/register", {
            "email": "bench@example.com", "password": "violet tractor sings at noon",
            "full_name": "Bench", "setup_token": "setup_bench-answers"})
        assert status == 201, body
        api.token = body["access_token"]
        status, body = api.upload(page)
        assert status == 202, body
        while api.call("GET", f"/api/v1/documents/{body['id']}")[1]["status"] != "ready":
            time.sleep(0.2)

        rows = []
        for question, follow_up in QUESTIONS:
            status, conversation = api.call("POST", "/api/v1/conversations", {})
            for turn, text in (("cold", question), ("follow-up", follow_up)):
                if text is None:
                    continue
                ttft, total, message = ask_streaming(api, conversation["id"], text)
                stats = message.get("stats") or {}
                rows.append({
                    "turn": turn, "question": text, "ttft_s": ttft, "total_s": total,
                    "fallback": message["fallback"], "confidence": message["confidence"],
                    "citations": len(message["citations"]),
                    "supported": fully_supported(message),
                    "model_markers_correct": stats.get("model_markers_correct"),
                    "prompt_tokens": stats.get("prompt_tokens"),
                    "answer": message["content"],
                })
                print(f"{turn:<9} {ttft:6.2f} s {total:6.2f} s  conf {message['confidence']:.2f} "
                      f"{'FALLBACK' if message['fallback'] else str(len(message['citations'])) + ' cit.'}"
                      f"  {text}", flush=True)

        def summary(turn):
            answered = [r for r in rows if r["turn"] == turn]
            return {
                "n": len(answered),
                "ttft_p50_s": round(statistics.median(r["ttft_s"] for r in answered), 2),
                "total_p50_s": round(statistics.median(r["total_s"] for r in answered), 2),
                "prompt_tokens_p50": statistics.median(
                    [r["prompt_tokens"] for r in answered if r["prompt_tokens"]] or [0]),
            }

        generated = [r for r in rows if not r["fallback"]]
        with_citations = [r for r in generated if r["citations"]]
        markers = [r["model_markers_correct"] for r in rows if r["model_markers_correct"] is not None]
        out_of_scope = {q for q, _ in QUESTIONS[-OUT_OF_SCOPE:]}
        report = {
            "threads": args.threads,
            "cold": summary("cold"),
            "follow_up": summary("follow-up"),
            "answers": len(rows),
            "fallbacks": sum(r["fallback"] for r in rows),
            "out_of_scope_fallbacks": sum(r["fallback"] for r in rows if r["question"] in out_of_scope),
            "answers_with_citations": len(with_citations),
            "answers_fully_supported": round(
                sum(r["supported"] for r in with_citations) / max(1, len(with_citations)), 3),
            "model_markers_correct": round(statistics.mean(markers), 3) if markers else None,
            "model_markers_answers": len(markers),
        }
        print(json.dumps(report, indent=1))
        if args.json:
            print(json.dumps({"report": report, "rows": rows}))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
