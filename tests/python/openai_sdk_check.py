#!/usr/bin/env python3
"""The official `openai` Python SDK against a running Compañero (tests/openai_sdk.rs starts it).

Environment: COMPANERO_URL (the server, e.g. http://127.0.0.1:1234), COMPANERO_KEY (an API key
of a tenant whose coach was taught the refund guide), COMPANERO_LIMITED_URL and
COMPANERO_LIMITED_KEY (a second server whose API rate limit is one request a minute).
Exits non-zero with the failed check on stderr.
"""

import os
import sys

import openai

base = os.environ["COMPANERO_URL"] + "/v1"
key = os.environ["COMPANERO_KEY"]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)


def check(condition, what):
    if not condition:
        sys.exit(f"failed: {what}")
    print(f"ok: {what}")


models = [m.id for m in client.models.list()]
check("coach" in models and len(models) == 3, f"models listed: {models}")

question = [{"role": "user", "content": "How long do refunds take?"}]
whole = client.chat.completions.create(model="coach", messages=question)
grounding = whole.model_extra["companero"]
answer = whole.choices[0].message.content
check("14" in answer, f"non-streamed coach answer: {answer!r}")
check(whole.choices[0].finish_reason == "stop", "finish_reason stop")
check(whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0, f"usage {whole.usage}")
check(
    not grounding["fallback"] and grounding["citations"][0]["document_title"] == "Refund policy",
    f"citations in the extension field: {grounding}",
)

text, last = "", None
for chunk in client.chat.completions.create(
    model="coach", messages=question, stream=True, stream_options={"include_usage": True}
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    last = chunk
check(text == answer, f"streamed answer equals the non-streamed one: {text!r}")
check(last.usage is not None and last.usage.completion_tokens > 0, "usage in the last chunk")
check(
    last.model_extra["companero"]["citations"][0]["document_title"] == "Refund policy",
    "citations on the last chunk",
)

vectors = client.embeddings.create(model="any", input=["refunds", "sleep well"])
check(
    len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384 and vectors.usage.prompt_tokens > 0,
    "embeddings (the SDK asks for base64 and decodes it)",
)
floats = client.embeddings.create(model="any", input="refunds", encoding_format="float")
check(
    max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors.data[0].embedding)) < 1e-6,
    "float and base64 encodings give the same vector",
)

try:
    openai.OpenAI(base_url=base, api_key="cmp_not-a-key", max_retries=0).models.list()
    check(False, "a bad key is refused")
except openai.AuthenticationError as error:
    check(error.status_code == 401 and error.body["type"] == "authentication_error", "AuthenticationError")

try:
    client.chat.completions.create(
        model="coach",
        messages=question,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
    )
    check(False, "tools are refused")
except openai.BadRequestError as error:
    check(error.param == "tools", f"BadRequestError names the field: {error.param}")

limited = openai.OpenAI(
    base_url=os.environ["COMPANERO_LIMITED_URL"] + "/v1",
    api_key=os.environ["COMPANERO_LIMITED_KEY"],
    max_retries=0,
)
try:
    for _ in range(5):
        limited.models.list()
    check(False, "the rate limit answers")
except openai.RateLimitError as error:
    check(int(error.response.headers["retry-after"]) >= 1, "RateLimitError with Retry-After")
