#!/usr/bin/env python3
"""Faithful answers through the real API: does any invented detail reach the person asking?

The question set lives in scripts/answers/: three documents of a made-up coaching business
(a membership policy, a six-week programme, an FAQ) and questions.json with
- in_scope: questions a document answers, with the passage that answers them and short facts
  of which at least one must appear in a correct answer;
- near_miss: questions that share the documents' vocabulary but that they do not answer (the
  coach should fall back);
- follow_up: questions asked right after another one in the same conversation ("And for
  non-members?"), which only that context makes answerable; judged like in_scope. A search-only
  table also shows where hybrid search puts their answering passage alone and joined with the
  question before (and what joining costs in-scope questions asked after an unrelated one).

The server is started on a fresh data directory, the documents are uploaded, the coach is set
to temperature 0 (and --strictness, where the binary has that setting) and every question is
asked in a new staff test conversation, streamed (SSE). Recorded per answer: client time to
the first delta ("first delivered"), total time, the stored message (content, citations,
fallback, confidence, stats: ttft_s, and the per-sentence `checks` of newer binaries), and
whether the deltas add up to exactly the stored content ("streamed == stored").

The judge is independent of the server's own checks. It takes the hard facts of every
sentence of the delivered answer: numbers, number words, amounts, durations (in minutes, so
"two weeks" == "14 days" == "a fortnight"), times, dates, weekdays, names (capitalised words
that do not start a sentence), emails and URLs. A fact is supported when it is in the snippet
of one of the citations its sentence carries; otherwise it is invented, unless the question
has it. (Each invented fact also says whether it is in any document at all: "unsupported by
its citation" versus "made up".) Fallback messages are not judged.

Citations are judged too, against the whole cited passage (found through the search API by its
chunk id):
- an in-scope (or follow-up) answer *cites the answering passage* when one of its citations is a chunk that
  holds the question's passage;
- a citation (a marker on a sentence) *supports its sentence* when the passage has every hard
  fact of the sentence (or the question does) and at least half of its content words, or when
  the sentence quotes the passage. Words are compared by their first four letters, without stop
  words: a cruder test than the server's, and independent of it.

usage: scripts/bench-answers [--binary PATH] [--threads N] [--strictness LEVEL|''] [--limit N]
                             [--json] [--out FILE]
Prints one line per question, then a Markdown summary table; --json also prints everything
(rows with answers and invented facts) as one JSON object; --out writes that object to FILE.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_retrieval import Api, free_port, percentile  # noqa: E402

HERE = Path(__file__).parent / "answers"
REQUEST_TIMEOUT = 600

# ---------------------------------------------------------------------------------------------
# Normalisation

UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"}
NUMBER_WORD = re.compile(
    r"\b(?:(?P<tens>" + "|".join(TENS) + r")(?:[- ](?P<unit>" + "|".join(list(UNITS)[1:10]) + r"))?"
    r"|(?P<small>" + "|".join(sorted(UNITS, key=len, reverse=True)) + r"))"
    r"(?P<hundred>[- ]hundred)?\b", re.I)
# "one" is a pronoun as often as a number: "the one you used", "one of our coaches".
ONE_BEFORE = {"the", "no", "this", "that", "any", "each", "every", "which", "some", "another", "new",
              "other", "same", "right", "wrong", "last", "next", "first", "old", "little", "big", "good",
              "someone", "everyone", "anyone"}
ONE_AFTER = {"of", "another", "who", "that", "which", "you", "is", "are", "can", "could", "will",
             "would", "should", "must", "may", "might", "and", "or", "to", "in", "on", "at",
             "for", "with", "by", "'s", "s", "i", "we", "it", "has", "was"}
MONTHS = {m: i + 1 for i, m in enumerate(
    "january february march april may june july august september october november december".split())}
MONTH_RE = "|".join(list(MONTHS) + [m[:3] for m in MONTHS if len(m) > 3] + ["sept"])
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
UNIT_MINUTES = {"minute": 1, "min": 1, "hour": 60, "hr": 60, "day": 1440, "week": 10080,
                "month": 43200, "year": 525600}
MARKER = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")


def words_to_digits(text):
    """Lower-cased text with number words as digits ("Two weeks" -> "2 weeks"). A capitalised
    number word inside a sentence is part of a name ("Reset Six") and stays a word."""
    text = re.sub(r"\b(?:a |one )?fortnight\b", "14 days", text, flags=re.I)
    text = re.sub(r"\bhalf an hour\b", "30 minutes", text, flags=re.I)
    text = re.sub(r"\bone[- ]to[- ]one\b", "one_to_one", text, flags=re.I)
    text = re.sub(r"\bone[- ]on[- ]one\b", "one_on_one", text, flags=re.I)
    text = re.sub(r"\b(?:a|one) hundred\b", "100", text, flags=re.I)

    def replace(match):
        word = match.group(0)
        before = text[:match.start()].rstrip()
        if word[0].isupper() and before and before[-1] not in ".!?:;\n-*([\"":
            return word.lower()
        if match.group("small") and match.group("small").lower() == "one" and not match.group("hundred"):
            previous = before.lower().split()
            after = re.match(r"[\s-]*([a-z']+)", text[match.end():].lower())
            # "from one plan to another": a pronoun too.
            another = re.match(r"(?:\W+\w+){1,4}?\W+another\b", text[match.end():].lower())
            if (previous and previous[-1] in ONE_BEFORE) or not after or after.group(1) in ONE_AFTER \
                    or another:
                return word.lower()
        groups = {k: (v.lower() if v else v) for k, v in match.groupdict().items()}
        if groups["tens"]:
            value = TENS[groups["tens"]] + (UNITS[groups["unit"]] if groups["unit"] else 0)
        else:
            value = UNITS[groups["small"]]
        if groups["hundred"]:
            value *= 100
        return str(value)

    return NUMBER_WORD.sub(replace, text).lower()


def clean(text):
    """Unicode punctuation made plain, Markdown emphasis removed."""
    text = (text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"')
            .replace("\u201d", '"').replace("\u2013", "-").replace("\u2014", "-")
            .replace("\u00a0", " ").replace("\u202f", " "))
    return re.sub(r"\*\*|__|`", "", text)


def norm(text):
    text = words_to_digits(clean(MARKER.sub("", text)))
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------
# Hard facts

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
URL = re.compile(r"\b(?:https?://[^\s\])>\"']+|www\.[^\s\])>\"']+|[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:eu|com|org|net|io|es|de|app)\b(?:/[^\s\])>\"']*)?)")
NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
CURRENCY = {"€": "eur", "eur": "eur", "euro": "eur", "euros": "eur", "$": "usd", "usd": "usd",
            "dollar": "usd", "dollars": "usd", "£": "gbp", "gbp": "gbp", "pound": "gbp",
            "pounds": "gbp"}
AMOUNT = re.compile(
    r"(?P<c1>€|\$|£|\beur\b|\busd\b|\bgbp\b)\s?(?P<v1>" + NUM + r")"
    r"|(?P<v2>" + NUM + r")\s?(?P<c2>€|\$|£|euros?\b|eur\b|dollars?\b|usd\b|pounds?\b|gbp\b)")
TIME = re.compile(
    r"\b(?P<h>\d{1,2})(?:[:.](?P<m>\d{2}))?\s?(?P<ap>a\.m\.|p\.m\.|am\b|pm\b)"
    r"|\b(?P<h2>[01]?\d|2[0-3]):(?P<m2>[0-5]\d)\b|\b(?P<word>noon|midday|midnight)\b")
DATE = re.compile(
    r"\b(?P<d1>\d{1,2})(?:st|nd|rd|th)?(?: of)? (?P<m1>" + MONTH_RE + r")\b\.?"
    r"|\b(?P<m2>" + MONTH_RE + r")\.? (?P<d2>\d{1,2})(?:st|nd|rd|th)?\b")
DURATION = re.compile(
    r"(?P<v>" + NUM + r")(?:\s|-)(?:working |business |calendar |full )?"
    r"(?P<u>minute|min|hour|hr|day|week|month|year)s?'?\b")
DURATION_RANGE = re.compile(
    r"(?P<a>" + NUM + r")\s?(?:-|to|and|or)\s?(?P<b>" + NUM + r")(?:\s|-)(?:working |business |calendar )?"
    r"(?P<u>minute|min|hour|hr|day|week|month|year)s?'?\b")
WEEKDAY = re.compile(r"\b(?P<d>" + "|".join(WEEKDAYS) + r")s?\b")
NUMBER = re.compile(r"(?<![\w.])(?P<v>" + NUM + r")(?:st|nd|rd|th)?\b")
# Capitalised words that are not names (where a sentence split was missed: lists, colons).
COMMON_CAPS = set("""I I'm I'd I'll I've The A An This That These Those You You'll You're You've
Your Yours We We'll We're Our It It's Its If In On At For To Yes No Not Please Note Hi Hello Hey
Thanks Thank Sure OK Ok Okay And But Or So Also However Here There What When Where Which Who
How Why Can Could Do Does Did Is Are Was Were Will Would Should Each Every All Any After Before
Once With Without From As By Of My Me Unfortunately Sorry Great Dear Best Regards Then Just
Only Some Most Many Both Either Neither Otherwise Alternatively First Second Third Finally
Next Last Currently Sometimes Usually Always Never Remember Keep Make Let Let's Feel Be Just
Good Important Unless Although While Because Since Until Even""".split())


def money(value):
    return float(value.replace(",", ""))


def hard_facts(sentence, ranges=True):
    """The hard facts of one sentence: [(kind, key, surface text)]; key is comparable. A range
    ("2-4 weeks") gives both ends, or nothing with ranges=False."""
    original = clean(MARKER.sub("", sentence))
    text = words_to_digits(original)
    facts = []
    taken = [False] * len(text)

    def take(match):
        if any(taken[match.start():match.end()]):
            return False
        for i in range(match.start(), match.end()):
            taken[i] = True
        return True

    for m in EMAIL.finditer(text):
        if take(m):
            facts.append(("email", m.group(0).rstrip("."), m.group(0)))
    for m in URL.finditer(text):
        if take(m):
            url = re.sub(r"^https?://|^www\.|[/.,;:)]+$", "", m.group(0))
            facts.append(("url", url, m.group(0)))
    for m in AMOUNT.finditer(text):
        if take(m):
            currency = CURRENCY[(m.group("c1") or m.group("c2")).strip()]
            facts.append(("amount", f"{currency} {money(m.group('v1') or m.group('v2')):g}", m.group(0)))
    for m in TIME.finditer(text):
        if not take(m):
            continue
        if m.group("word"):
            key = "00:00" if m.group("word") == "midnight" else "12:00"
        elif m.group("ap"):
            hour = int(m.group("h")) % 12 + (12 if m.group("ap").startswith("p") else 0)
            key = f"{hour:02d}:{m.group('m') or '00'}"
        else:
            key = f"{int(m.group('h2')):02d}:{m.group('m2')}"
        facts.append(("time", key, m.group(0)))
    for m in DATE.finditer(text):
        if take(m):
            month = (m.group("m1") or m.group("m2"))[:3]
            number = next(v for k, v in MONTHS.items() if k.startswith(month))
            facts.append(("date", f"{number:02d}-{int(m.group('d1') or m.group('d2')):02d}", m.group(0)))
    for m in DURATION_RANGE.finditer(text):
        if take(m) and ranges:
            for value in (m.group("a"), m.group("b")):
                minutes = money(value) * UNIT_MINUTES[m.group("u")]
                facts.append(("duration", f"{minutes:g} min", f"{value} {m.group('u')}s"))
    for m in DURATION.finditer(text):
        if take(m):
            minutes = money(m.group("v")) * UNIT_MINUTES[m.group("u")]
            facts.append(("duration", f"{minutes:g} min", m.group(0)))
    for m in WEEKDAY.finditer(text):
        if take(m):
            facts.append(("weekday", m.group("d"), m.group(0)))
    for m in NUMBER.finditer(text):
        if take(m):
            facts.append(("number", f"{money(m.group('v')):g}", m.group(0)))
    facts += [("entity", key, name) for name in names(original)
              for key in [words_to_digits(name)] if re.search(r"[^\W\d_]", key)]
    seen = set()
    return [f for f in facts if (f[0], f[1]) not in seen and not seen.add((f[0], f[1]))]


def names(sentence):
    """Runs of capitalised words that do not start the sentence (or a clause after a colon),
    without weekdays, months and common sentence openers. A run of two or more may start the
    sentence ("Marta Ruiz leads...")."""
    out, run = [], []
    start = True
    opener = False

    def flush():
        nonlocal opener
        if run and not (opener and len(run) == 1):
            out.append(" ".join(run))
        run.clear()
        opener = False

    for token in re.finditer(r"[^\W\d_][\w'&-]*(?:\.[^\W\d_]+)*\.?|\d+|\S", sentence):
        tok = token.group(0)
        if tok[0].isalpha():
            word = re.sub(r"'s$|'$", "", tok.rstrip("."))
            lower = word.lower()
            if word[0].isupper() and word not in COMMON_CAPS \
                    and lower.rstrip("s") not in WEEKDAYS and lower not in MONTHS:
                if start:
                    flush()
                    opener = True
                run.append(word)
            else:
                flush()
            start = tok.endswith(".") and len(word) > 1 and not word.isupper()
        else:
            flush()
            if tok in (":", ";", "!", "?", ".", "-", "*", "\u2022"):
                start = True
            elif tok[0].isdigit():
                start = False
    flush()
    return out


class Source:
    """A text that can support facts: its normalised form and its facts by kind."""

    def __init__(self, text, ranges=True, title=""):
        self.text = norm(text)
        # The cited document's title supports names too ("Kestrel Coaching"): the reader sees it.
        self.title = norm(title)
        self.keys = set()
        for line in re.split(r"\n+", text):
            for kind, key, _ in hard_facts(line, ranges):
                self.keys.add((kind, key))
        self.numbers = {f"{money(n):g}" for n in re.findall(NUM, self.text)}

    def supports(self, kind, key):
        if (kind, key) in self.keys:
            return True
        if kind == "number":
            return key in self.numbers
        if kind in ("entity", "email", "url"):
            pattern = r"(?<!\w)" + re.escape(key) + r"(?!\w)"
            return re.search(pattern, self.text) is not None or (
                kind == "entity" and re.search(pattern, self.title) is not None)
        if kind == "weekday":
            return re.search(r"\b" + key, self.text) is not None
        return False


def split_sentences(content):
    """[(sentence without markers, [markers])]: on . ! ? and whitespace, and on line breaks.
    Markers written after the full stop ("... today. [2]") belong to the sentence before."""
    pieces = []
    for line in content.split("\n"):
        line = re.sub(r"^\s*(?:#+|[-*•]|\d+[.)])\s+", "", line)
        line = re.sub(r"\b(e\.g|i\.e|etc)\.", lambda m: m.group(1).replace(".", ""), line)
        # A sentence ends at . ! ? (or after one, at a closing quote: the coach's quotations).
        for piece in re.split(r"(?:(?<=[.!?])|(?<=[.!?][”\"’]))\s+", line):
            lead = re.match(r"^(?:\s*\[\d+(?:\s*,\s*\d+)*\])+", piece)
            if lead and pieces:
                pieces[-1] += " " + lead.group(0)
                piece = piece[lead.end():]
            if piece.strip():
                pieces.append(piece)
    out = []
    for piece in pieces:
        markers = [int(n) for group in MARKER.findall(piece) for n in re.split(r"\s*,\s*", group)]
        text = MARKER.sub("", piece).strip()
        if re.search(r"\w", text):
            out.append((text, markers))
    return out


def judge(content, citations, question, documents):
    """Per-sentence facts and the invented ones."""
    snippets = {c["marker"]: Source(c.get("snippet") or "", title=c.get("document_title") or "")
                for c in citations}
    asked = Source(question)
    sentences = []
    invented = []
    for text, markers in split_sentences(content):
        facts = hard_facts(text)
        row = {"text": text, "markers": markers, "facts": [], "invented": []}
        for kind, key, surface in facts:
            fact = {"kind": kind, "key": key, "text": surface}
            row["facts"].append(fact)
            if any(m in snippets and snippets[m].supports(kind, key) for m in markers):
                continue
            if asked.supports(kind, key):
                continue
            fact = {**fact, "sentence": text, "cited": bool(markers),
                    "in_documents": any(d.supports(kind, key) for d in documents.values())}
            row["invented"].append(fact)
            invented.append(fact)
        sentences.append(row)
    return sentences, invented


def contains_fact(content, fact):
    """A fact string (e.g. "14 days", "€29", "account page") is in the content: as normalised
    text, or as the same hard facts ("two weeks" for "14 days")."""
    if re.search(r"(?<!\w)" + re.escape(norm(fact)) + r"(?!\w)", norm(content)):
        return True
    # Compared as a hard fact only when the fact is nothing but one duration, amount, time or
    # date ("14 days", "€29"): not "one coaching call per month" against any "one".
    facts = hard_facts(fact, ranges=False)
    if len(facts) != 1 or facts[0][0] in ("number", "entity", "weekday"):
        return False
    kind, key, surface = facts[0]
    if len(re.sub(r"\W", "", norm(fact))) - len(re.sub(r"\W", "", surface)) > 1:
        return False
    return Source(content, ranges=False).supports(kind, key)


# Words that carry no content, for the citation judge.
JUDGE_STOP = set("""a an and are as at be been but by can could do does for from has have how i if in
into is it its may me my no not of on or our so than that the their them then there these they
this to was we were what when where which who why will with would you your yours about any all
also just more most some such only own same very each both few other""".split())


def judge_words(text):
    return {w[:4] for w in re.findall(r"[^\W\d_]{3,}", norm(text)) if w not in JUDGE_STOP}


def citation_supports(sentence, passage, question):
    """The citation judge: does `passage` (a chunk's text) support `sentence`?"""
    flat, said = norm(passage), norm(sentence)
    if said.strip("“”\"' .") and said.strip("“”\"' .") in flat:
        return True
    source, asked = Source(passage), Source(question)
    if any(not source.supports(k, v) and not asked.supports(k, v)
           for k, v, _ in hard_facts(sentence)):
        return False
    words = judge_words(sentence)
    return bool(words) and len(words & judge_words(passage)) / len(words) >= 0.5


class Passages:
    """Chunk texts by chunk id, looked up through the search API (there is no chunk endpoint):
    a lexical search for a passage's own words finds it."""

    def __init__(self, api):
        self.api = api
        self.text = {}

    def search(self, query):
        status, body = self.api.call("POST", "/api/v1/search",
                                     {"query": query[:1000], "limit": 50, "mode": "lexical"})
        assert status == 200, body
        for hit in body["results"]:
            self.text[hit["chunk_id"]] = hit["text"]
        return body["results"]

    def holding(self, passage):
        """Chunk ids of the chunks that hold all of `passage` (or, where a chunk boundary cuts
        it, any of its sentences)."""
        hits = self.search(passage)
        whole = {h["chunk_id"] for h in hits if norm(passage) in norm(h["text"])}
        return whole or {h["chunk_id"] for h in hits for sentence in re.split(r"(?<=[.!?])\s+", passage)
                         if norm(sentence) in norm(h["text"])}

    def get(self, chunk_id, snippet):
        if chunk_id not in self.text and snippet:
            self.search(snippet)
        return self.text.get(chunk_id)


def judge_citations(sentences, citations, question, passages):
    """[(sentence, marker, supports)] for every marker of every sentence."""
    by_marker = {c["marker"]: c for c in citations}
    out = []
    for row in sentences:
        for marker in row["markers"]:
            cited = by_marker.get(marker)
            text = cited and passages.get(cited.get("chunk_id"), cited.get("snippet"))
            out.append({"sentence": row["text"], "marker": marker,
                        "supports": bool(text) and citation_supports(row["text"], text, question)})
    return out


# ---------------------------------------------------------------------------------------------
# The question set

def load_questions(limit=None):
    spec = json.loads((HERE / "questions.json").read_text(encoding="utf-8"))
    documents = {}
    for path in sorted(HERE.glob("*.md")):
        documents[path.name] = path.read_text(encoding="utf-8")
    flat = {name: norm(re.sub(r"^\s*(?:#+|[-*•]|\d+[.)])\s+", "", text, flags=re.M))
            for name, text in documents.items()}
    problems = []
    for q in spec["in_scope"] + spec["follow_up"]:
        if q["document"] not in documents:
            problems.append(f"{q['question']}: no document {q['document']}")
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", q["passage"]):
            if norm(sentence) not in flat[q["document"]]:
                problems.append(f"{q['question']}: passage not in {q['document']}: {sentence}")
        if not any(contains_fact(q["passage"], f) for f in q["facts"]):
            problems.append(f"{q['question']}: no fact is in the passage")
        for fact in q["facts"]:
            if not contains_fact(documents[q["document"]], fact):
                problems.append(f"{q['question']}: fact not in {q['document']}: {fact}")
    if problems:
        raise SystemExit("questions.json does not match the documents:\n  " + "\n  ".join(problems))
    in_scope, near_miss, follow_up = spec["in_scope"], spec["near_miss"], spec["follow_up"]
    if limit:
        in_scope, near_miss, follow_up = in_scope[:limit], near_miss[:limit], follow_up[:limit]
    return documents, in_scope, near_miss, follow_up


# ---------------------------------------------------------------------------------------------
# The server

def ask_streaming(api, conversation, content):
    """Streams one answer. Returns (first delta s, total s, deltas joined, final message or
    None, error or None)."""
    # The run outlives an access token; nothing is timed yet.
    api.fresh_token()
    body = json.dumps({"content": content}).encode()
    request = urllib.request.Request(
        f"{api.base}/api/v1/conversations/{conversation}/messages", data=body, method="POST",
        headers={"Content-Type": "application/json", "Accept": "text/event-stream",
                 "Authorization": f"Bearer {api.token}"})
    started = time.perf_counter()
    first = None
    streamed = []
    message = None
    error = None
    event, data = None, []
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            if "text/event-stream" not in response.headers.get("Content-Type", ""):
                payload = json.loads(response.read() or b"null")
                return None, time.perf_counter() - started, "", None, \
                    f"HTTP {response.status} without a stream: {json.dumps(payload)[:300]}"
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if line:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)
                    continue
                # A blank line ends the event.
                payload = "\n".join(data)
                name, event, data = event or "message", None, []
                if not payload:
                    continue
                if name == "delta":
                    if first is None:
                        first = time.perf_counter() - started
                    streamed.append(json.loads(payload).get("text", ""))
                elif name == "message":
                    message = json.loads(payload)
                    break
                elif name == "error":
                    error = json.loads(payload)
                    break
    except urllib.error.HTTPError as http:
        error = f"HTTP {http.code}: {http.read()[:300].decode('utf-8', 'replace')}"
    except (OSError, ValueError) as failure:
        error = f"{type(failure).__name__}: {failure}"
    if message is None and error is None:
        error = "the stream ended without a message event"
    return first, time.perf_counter() - started, "".join(streamed), message, error


def start_server(args, work, port, log):
    command = [
        args.binary, "serve", "--data-dir", str(work / "data"), "--bind", f"127.0.0.1:{port}",
        "--setup-token", "setup_bench-answers",
        "--embedder", args.embedder, "--llm", args.llm, "--offline", "--signup", "open",
        "--log-level", "warn", "--threads", str(args.threads), "--request-timeout-secs", "600",
        "--api-rate-limit", "1000000"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(api, server, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            status, ready = api.call("GET", "/readyz")
            components = (ready or {}).get("components", {})
            if status == 200 and all(c.get("ready", True) for c in components.values()
                                     if isinstance(c, dict)):
                return ready
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not get ready")


def teach_documents(api, server, documents):
    """Waits for the server, registers the benchmark's creator, signs `api` in, uploads
    `documents` (names in scripts/answers/) and waits until every one is ready."""
    wait_ready(api, server)
    credentials = {"email": "bench@example.com", "password": "violet tractor sings at noon"}
    status, body = api.call("POST", "/api/v1/auth/register", {
        **credentials, "full_name": "Bench", "setup_token": "setup_bench-answers"})
    assert status == 201, body
    api.sign_in(credentials)
    ids = {}
    for name in documents:
        status, body = api.upload(HERE / name)
        assert status == 202, (name, body)
        ids[name] = body["id"]
    deadline = time.time() + 600
    for name, document_id in ids.items():
        while True:
            status, body = api.call("GET", f"/api/v1/documents/{document_id}")
            if body["status"] == "ready":
                break
            if body["status"] == "failed" or time.time() > deadline:
                raise SystemExit(f"{name} did not become ready: {body}")
            time.sleep(0.2)


def set_coach(api, strictness):
    """Temperature 0 and the strictness, where the binary has it. Returns (coach, note)."""
    change = {"temperature": 0.0}
    note = None
    if strictness:
        status, body = api.call("PATCH", "/api/v1/coach", {**change, "strictness": strictness})
        if status == 200:
            return body, None
        message = json.dumps(body)
        if status not in (400, 422) or "unknown field" not in message:
            raise SystemExit(f"setting strictness {strictness!r} failed: {status} {message}")
        note = f"this binary has no strictness setting ({status}: {message[:200]})"
    status, body = api.call("PATCH", "/api/v1/coach", change)
    if status != 200:
        raise SystemExit(f"setting the temperature failed: {status} {body}")
    return body, note


# ---------------------------------------------------------------------------------------------

def ask_all(api, items, kind, documents, fallback_text, passages):
    rows = []
    for item in items:
        question = item["question"]
        status, conversation = api.call("POST", "/api/v1/conversations", {})
        if status not in (200, 201):
            raise SystemExit(f"creating a conversation failed: {status} {conversation}")
        if "first" in item:
            # The question a follow-up follows, in the same conversation; not judged.
            ask_streaming(api, conversation["id"], item["first"])
        first, total, streamed, message, error = ask_streaming(api, conversation["id"], question)
        row = {"kind": kind, "question": question, "first_delivered_s": first, "total_s": total,
               "error": error}
        if "first" in item:
            row["first"] = item["first"]
        if kind in ANSWERABLE:
            row.update(document=item["document"], expected=item["facts"], passage=item["passage"],
                       answering_chunks=sorted(passages.holding(item["passage"])))
        else:
            row["why"] = item.get("why")
        if message is not None:
            stats = message.get("stats") or {}
            checks = stats.get("checks")
            content = message.get("content") or ""
            is_fallback = bool(message.get("fallback"))
            # The configured fallback message is not the model's: not judged. Anything else
            # delivered is, even when flagged as a fallback.
            judged = not (is_fallback and fallback_text and content.strip().startswith(fallback_text.strip()))
            sentences, invented = (judge(content, message.get("citations") or [], question, documents)
                                   if judged else ([], []))
            stored_source = Source(content)
            asked = Source(question)
            stream_only = [] if streamed == content else [
                {"kind": k, "key": v, "text": s}
                for sentence, _ in split_sentences(streamed) for k, v, s in hard_facts(sentence)
                if not stored_source.supports(k, v) and not asked.supports(k, v)]
            row.update({
                "content": content,
                "streamed": streamed,
                "streamed_equals_stored": streamed == content,
                "stream_only_facts": stream_only,
                "fallback": is_fallback,
                "confidence": message.get("confidence"),
                "citations": [{k: c.get(k) for k in ("marker", "snippet", "document_title",
                                                     "heading_path", "chunk_id")}
                              for c in message.get("citations") or []],
                "citation_checks": judge_citations(sentences, message.get("citations") or [],
                                                   question, passages),
                "ttft_s": stats.get("ttft_s"),
                # Newer binaries time both from the question, on the server.
                "server_first_token_s": stats.get("first_token_s"),
                "server_first_sentence_s": stats.get("first_sentence_s"),
                "server_total_s": stats.get("total_s"),
                "retrieval_score": stats.get("retrieval_score"),
                "support": stats.get("support"),
                "retrieved": [{k: r.get(k) for k in ("document_title", "heading_path", "score",
                                                     "chunk_id")}
                              for r in stats.get("retrieved") or []],
                "retrieval_queries": stats.get("queries"),
                "raw_answer": stats.get("raw_answer"),
                "checks": checks,
                "repaired": None if checks is None else any(
                    isinstance(c, dict) and c.get("verdict") == "repaired" for c in checks),
                "sentences": sentences,
                "invented": invented,
                "faithful": not is_fallback and not invented,
            })
            if kind in ANSWERABLE:
                row["answering_rank"] = next(
                    (i + 1 for i, r in enumerate(stats.get("retrieved") or [])
                     if r.get("chunk_id") in row["answering_chunks"]), None)
                row["has_expected_fact"] = not is_fallback and any(
                    contains_fact(content, f) for f in item["facts"])
                cited = {c.get("chunk_id") for c in message.get("citations") or []}
                answering = set(row["answering_chunks"])
                row["cites_answering_passage"] = not is_fallback and bool(cited & answering)
                row["cites_only_answering_passage"] = (not is_fallback and bool(cited)
                                                       and cited <= answering)
        rows.append(row)
        print(line_for(row), flush=True)
    return rows


def context_retrieval(api, follow_ups, in_scope, passages):
    """Search alone (no model): where hybrid search puts the answering passage of a query
    searched alone and searched after the question before it. For follow-ups the question
    before is theirs; for in-scope questions it is the previous in-scope question, on another
    topic: what joining the context costs a question that needs none."""
    sets = {"follow-ups": [(i, i["first"]) for i in follow_ups],
            "in-scope after an unrelated question": [
                (item, in_scope[n - 1]["question"]) for n, item in enumerate(in_scope)
                if n and in_scope[n - 1]["passage"] != item["passage"]]}
    out = {}
    for name, pairs in sets.items():
        for variant in ("alone", "with the question before"):
            ranks = []
            for item, before in pairs:
                answering = passages.holding(item["passage"])
                query = item["question"] if variant == "alone" else f"{before} {item['question']}"
                status, body = api.call("POST", "/api/v1/search",
                                        {"query": query, "limit": 10, "mode": "hybrid"})
                assert status == 200, body
                ranks.append(next((i + 1 for i, hit in enumerate(body["results"])
                                   if hit["chunk_id"] in answering), None))
            out[f"{name}, {variant}"] = {
                "hit@1": share(sum(r == 1 for r in ranks), len(ranks)),
                "hit@3": share(sum(r is not None and r <= 3 for r in ranks), len(ranks)),
                "ranks": ranks}
    return out


# Question sets whose answering passage is known.
ANSWERABLE = ("in_scope", "follow_up")


def line_for(row):
    def seconds(v):
        return f"{v:6.2f}" if isinstance(v, (int, float)) else "     -"
    kind = row["kind"].replace("_", "-")
    if row.get("error") and "content" not in row:
        return f"{kind:<9} ERROR {row['error']}  {row['question']}"
    verdict = "FALLBACK" if row["fallback"] else f"answered {len(row['citations'])} cit."
    extra = ""
    if row["kind"] in ANSWERABLE and not row["fallback"]:
        extra += " fact+" if row["has_expected_fact"] else " fact-"
        extra += " cites-answer" if row["cites_answering_passage"] else " misses-answer"
    wrong = [c for c in row.get("citation_checks", []) if not c["supports"]]
    if wrong:
        extra += f"  {len(wrong)} unsupported cit."
    if row["invented"]:
        extra += "  invented: " + ", ".join(f"{f['kind']} {f['text']!r}" for f in row["invented"])
    if not row["streamed_equals_stored"]:
        extra += "  streamed!=stored"
    conf = row["confidence"]
    conf = f"{conf:.2f}" if isinstance(conf, (int, float)) else "-"
    return (f"{kind:<9} ttft {seconds(row['ttft_s'])} s  first {seconds(row['first_delivered_s'])} s  "
            f"total {seconds(row['total_s'])} s  conf {conf}  {verdict}{extra}  | {row['question']}")


def share(count, total):
    return {"n": count, "of": total, "share": round(count / total, 3) if total else None}


def dist(values):
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return None
    return {"p50": round(percentile(values, 50), 3), "p90": round(percentile(values, 90), 3),
            "n": len(values)}


def count(items, test):
    return share(sum(1 for r in items if "content" in r and test(r)), len(items))


def answerable_summary(items):
    """How the questions with a known answering passage went."""
    repaired_known = [r for r in items if r.get("repaired") is not None]
    answered = [r for r in items if "content" in r and not r["fallback"]]
    checks = [c for r in answered for c in r.get("citation_checks", [])]
    return {
        "questions": len(items),
        "answered": count(items, lambda r: not r["fallback"]),
        "fully_faithful": count(items, lambda r: r["faithful"]),
        "has_expected_fact": count(items, lambda r: r.get("has_expected_fact")),
        "faithful_with_expected_fact": count(items, lambda r: r["faithful"] and r.get("has_expected_fact")),
        "repaired": None if not repaired_known else count(items, lambda r: r.get("repaired")),
        "fell_back": count(items, lambda r: r["fallback"]),
        # Where retrieval put the answering passage among those the model was given.
        "answering_passage_retrieved_first": count(items, lambda r: r.get("answering_rank") == 1),
        "answering_passage_retrieved": count(items, lambda r: r.get("answering_rank") is not None),
        "answers_citing_answering_passage": count(answered, lambda r: r["cites_answering_passage"]),
        "answers_citing_only_answering_passage": count(
            answered, lambda r: r["cites_only_answering_passage"]),
        "citations_supporting_their_sentence": share(sum(c["supports"] for c in checks), len(checks)),
    }


def summarise(rows):
    ins = [r for r in rows if r["kind"] == "in_scope"]
    near = [r for r in rows if r["kind"] == "near_miss"]
    ok = [r for r in rows if "content" in r]
    verdicts = {}
    for r in ok:
        for c in r.get("checks") or []:
            if isinstance(c, dict):
                verdicts[str(c.get("verdict"))] = verdicts.get(str(c.get("verdict")), 0) + 1
    generated = [r for r in ok if isinstance(r.get("ttft_s"), (int, float))]
    kinds = {}
    for r in ok:
        for f in r["invented"]:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    checks = [c for r in ok if not r["fallback"] for c in r.get("citation_checks", [])]
    return {
        "errors": sum(1 for r in rows if r.get("error")),
        "in_scope": answerable_summary(ins),
        "follow_up": answerable_summary([r for r in rows if r["kind"] == "follow_up"]),
        "near_miss": {
            "questions": len(near),
            "fell_back": count(near, lambda r: r["fallback"]),
            "answered_faithfully": count(near, lambda r: r["faithful"]),
            "answered_with_invented_fact": count(near, lambda r: not r["fallback"] and r["invented"]),
        },
        "all": {
            "answers_with_invented_fact": count(rows, lambda r: bool(r["invented"])),
            "answers_with_made_up_fact": count(
                rows, lambda r: any(not f["in_documents"] for f in r["invented"])),
            "invented_facts_by_kind": kinds,
            "streamed_equals_stored": count(rows, lambda r: r["streamed_equals_stored"]),
            "stream_showed_fact_not_stored": count(rows, lambda r: bool(r["stream_only_facts"])),
            "check_verdicts": verdicts or None,
            "citations_supporting_their_sentence": share(sum(c["supports"] for c in checks), len(checks)),
        },
        # Answers the model wrote (stats.ttft_s known); fallbacks without generation arrive at
        # once and would pull the first-delivered figures down.
        "timing": {
            "generated": len(generated),
            "ttft_s": dist(r["ttft_s"] for r in generated),
            "first_delivered_s": dist(r.get("first_delivered_s") for r in generated),
            "first_delivered_minus_ttft_s": dist(
                r["first_delivered_s"] - r["ttft_s"] for r in generated
                if isinstance(r.get("first_delivered_s"), (int, float))),
            "server_first_sentence_minus_first_token_s": dist(
                r["server_first_sentence_s"] - r["server_first_token_s"] for r in generated
                if isinstance(r.get("server_first_sentence_s"), (int, float))
                and isinstance(r.get("server_first_token_s"), (int, float))),
            "total_s": dist(r.get("total_s") for r in generated),
            "first_delivered_all_s": dist(r.get("first_delivered_s") for r in ok),
            "total_all_s": dist(r.get("total_s") for r in ok),
        },
    }


def answerable_lines(name, s, frac):
    return [
        f"| {name}: answered | {frac(s['answered'])} |",
        f"| {name}: fully faithful (answered, nothing invented) | {frac(s['fully_faithful'])} |",
        f"| {name}: has the expected fact | {frac(s['has_expected_fact'])} |",
        f"| {name}: faithful and has the expected fact | {frac(s['faithful_with_expected_fact'])} |",
        f"| {name}: repaired | {frac(s['repaired'])} |",
        f"| {name}: fell back | {frac(s['fell_back'])} |",
        f"| {name}: answering passage retrieved first / among the passages | "
        f"{frac(s['answering_passage_retrieved_first'])} / {frac(s['answering_passage_retrieved'])} |",
        f"| **{name} answers citing the answering passage (target 90%)** | "
        f"**{frac(s['answers_citing_answering_passage'])}** |",
        f"| {name} answers citing only the answering passage | "
        f"{frac(s['answers_citing_only_answering_passage'])} |",
        f"| **{name} citations supporting their sentence (target 80%)** | "
        f"**{frac(s['citations_supporting_their_sentence'])}** |",
    ]


def markdown(report):
    s = report["summary"]

    def frac(x):
        if x is None:
            return "n/a (binary reports no checks)"
        return f"{x['n']}/{x['of']} ({100 * x['share']:.0f}%)" if x["of"] else "0/0"

    def t(x):
        return "n/a" if x is None else f"{x['p50']:.2f} s / {x['p90']:.2f} s"

    def p50(x):
        return "n/a" if x is None else f"{x['p50']:.2f} s"

    lines = [
        f"Binary `{report['binary']}`, strictness: {report['strictness_applied'] or 'not set'}, "
        f"threads {report['threads']}, temperature 0.",
        "",
        "| measure | value |",
        "|---|---|",
        *answerable_lines("in-scope", s["in_scope"], frac),
        *answerable_lines("follow-up", s["follow_up"], frac),
        f"| near-miss: fell back | {frac(s['near_miss']['fell_back'])} |",
        f"| near-miss: answered faithfully | {frac(s['near_miss']['answered_faithfully'])} |",
        f"| near-miss: answered with an invented fact | {frac(s['near_miss']['answered_with_invented_fact'])} |",
        f"| **all: answers with an invented number, amount, duration, time, date, weekday, name, "
        f"email or URL (target 0)** | "
        f"**{frac(s['all']['answers_with_invented_fact'])}** |",
        f"| all: of those, with a fact found in no document | {frac(s['all']['answers_with_made_up_fact'])} |",
        f"| invented facts by kind | {', '.join(f'{k} {v}' for k, v in sorted(s['all']['invented_facts_by_kind'].items())) or 'none'} |",
        f"| streamed == stored | {frac(s['all']['streamed_equals_stored'])} |",
        f"| stream showed a fact the stored answer lacks | {frac(s['all']['stream_showed_fact_not_stored'])} |",
        f"| server check verdicts | {', '.join(f'{k} {v}' for k, v in sorted((s['all']['check_verdicts'] or {}).items())) or 'n/a'} |",
        f"| answers the model generated (timings below) | {s['timing']['generated']} |",
        f"| time to first token (stats.ttft_s) p50 / p90 | {t(s['timing']['ttft_s'])} |",
        f"| first delivered (client, first delta) p50 / p90 | {t(s['timing']['first_delivered_s'])} |",
        f"| first delivered - first token p50 / p90 | {t(s['timing']['first_delivered_minus_ttft_s'])} |",
        f"| server: first checked sentence - first token, both from the question, p50 / p90 | "
        f"{t(s['timing']['server_first_sentence_minus_first_token_s'])} |",
        f"| total p50 (generated / all answers) | {p50(s['timing']['total_s'])} / {p50(s['timing']['total_all_s'])} |",
    ]
    if s["errors"]:
        lines.append(f"| errors | {s['errors']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    parser.add_argument("--binary", default=f"{target}/release/companero")
    models = os.environ.get("COMPANERO_TEST_MODELS", str(Path.home() / ".cache/companero/test-models"))
    parser.add_argument("--embedder", default=f"{models}/all-minilm-l6-v2")
    parser.add_argument("--llm", default=f"{models}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--strictness", default="strict",
                        help="the coach's strictness [default: strict]; '' leaves it unset")
    parser.add_argument("--limit", type=int, help="only the first N questions of each set")
    parser.add_argument("--json", action="store_true", help="also print everything as one JSON object")
    parser.add_argument("--out", help="write everything as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()

    documents, in_scope, near_miss, follow_up = load_questions(args.limit)
    sources = {name: Source(text) for name, text in documents.items()}
    work = Path(tempfile.mkdtemp(prefix="companero-answers-"))
    port = free_port()
    log_path = work / "server.log"
    log = open(log_path, "w")
    server = start_server(args, work, port, log)
    try:
        api = Api(f"http://127.0.0.1:{port}")
        teach_documents(api, server, documents)
        coach, note = set_coach(api, args.strictness)
        if note:
            print(f"note: {note}; continuing with temperature 0 only", flush=True)
        # One question first, not counted, so the models are loaded before anything is timed.
        status, conversation = api.call("POST", "/api/v1/conversations", {})
        ask_streaming(api, conversation["id"], "Hello!")

        passages = Passages(api)
        retrieval = context_retrieval(api, follow_up, in_scope, passages)
        fallback = coach.get("fallback_message", "")
        rows = ask_all(api, in_scope, "in_scope", sources, fallback, passages)
        rows += ask_all(api, near_miss, "near_miss", sources, fallback, passages)
        rows += ask_all(api, follow_up, "follow_up", sources, fallback, passages)
        report = {
            "binary": args.binary,
            "threads": args.threads,
            "strictness_requested": args.strictness or None,
            "strictness_applied": None if note else (args.strictness or None),
            "note": note,
            "coach": coach,
            "summary": summarise(rows),
            "follow_up_retrieval": retrieval,
            # The cited chunks' texts, so the citation judge can be re-run on this file.
            "passages": {str(k): v for k, v in passages.text.items()},
            "rows": rows,
        }
        print()
        print(markdown(report))
        print("\nSearch alone (hybrid), with and without the question before: hit@1 / hit@3 of "
              "the answering passage")
        for name, figures in retrieval.items():
            print(f"- {name}: {figures['hit@1']['n']}/{figures['hit@1']['of']} / "
                  f"{figures['hit@3']['n']}/{figures['hit@3']['of']}")
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if args.json:
            print(json.dumps(report, ensure_ascii=False))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        # Warnings and errors the server logged (its --log-level is warn), minus the set-up
        # banner and the 503s of /readyz while the models load.
        logged = [line for line in log_path.read_text(errors="replace").splitlines()
                  if re.search(r"\b(WARN|ERROR)\b", line) and "503 Service Unavailable" not in line]
        if logged:
            print(f"server log ({len(logged)} warnings/errors), last ones:", file=sys.stderr)
            for line in logged[-10:]:
                print("  " + line, file=sys.stderr)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
