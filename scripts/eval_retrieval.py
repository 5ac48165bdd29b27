#!/usr/bin/env python3
"""Retrieval evaluation through the real API: hit@1, hit@5 and MRR@10 for BM25 alone, vectors
alone and hybrid, plus ingestion throughput and search latency.

The benchmark is built from real question-and-answer documents that a package ships: the
Python FAQ inside Debian's python3.11-doc (HTML). Each FAQ question is an <h3> heading over its
answer. The question is removed from the corpus (its heading becomes a neutral "Entry N"), so
a query must find its answer by meaning, not by copying the question; a result is relevant when
its heading path contains that entry's label.

The small set (the default) adds the tutorial and the HOWTOs unchanged as distractors (43
documents, about 1,800 chunks). `--sizes 1000,10000,50000` builds larger sets for each size:
the same FAQ, then distractor pages in a fixed order (tutorial, HOWTOs, language reference,
library reference, what's new, C API, ...; then PostgreSQL's manual from postgresql-doc-15,
Django's from python-django-doc, SQLAlchemy's from python-sqlalchemy-doc and git's from git-doc
as each runs out)
until the estimated chunk count reaches the size. A larger set starts with a smaller one's
pages, so a cached smaller set can seed it: copy its directory to the larger size's name and
the run uploads only the pages that are missing. Ingesting tens of
thousands of chunks takes a while on a small machine, so `--cache` keeps each ingested data
directory under ~/.cache/companero/eval and later runs reuse it (delete it after changing the
chunker).

usage: scripts/eval-retrieval [--sizes N,N] [--cache] [--chunk-tokens N] [--chunk-overlap N]
                              [--binary PATH] [--embedder DIR] [--lexical-weight W]
                              [--weights 0,0.1,0.3] [--keep] [--reuse DIR] [--json]
Prints a table per size; --json prints one JSON object per size too.
"""

import argparse
import glob
import html
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "companero" / "eval"
PACKAGE = "python3.11-doc"


def fetch_package(package: str, marker: str) -> Path:
    """Downloads and unpacks a Debian package once; returns where it was unpacked."""
    root = CACHE / package
    if (root / marker).exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", package]
        quiet = {"cwd": tmp, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        # A fresh machine has no package lists yet: fetch them once, then try again.
        if subprocess.run(download, **quiet).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True, **quiet)
            subprocess.run(download, check=True, **quiet)
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def fetch_manual() -> Path:
    """The Python manual's HTML root."""
    return fetch_package(PACKAGE, "usr/share/doc/python3.11/html/faq/general.html") / \
        "usr/share/doc/python3.11/html"


# Distractor sections of the Python manual, in the order a scaled set takes them.
PYTHON_SECTIONS = ["tutorial", "howto", "reference", "library", "whatsnew", "c-api", "extending",
                   "using", "distutils", "install", "installing", "distributing"]
# Characters of page text per chunk at the default chunk size, measured on the small set
# (1,816 chunks): sizes a scaled set before ingesting it.
CHARS_PER_CHUNK = 550


def page_text_chars(page: Path) -> int:
    text = page.read_text(encoding="utf-8", errors="replace")
    body = re.search(r'<div class="body" role="main">(.*?)<div class="sphinxsidebar', text, re.S) or \
        re.search(r'<div id="docs-body"[^>]*>(.*?)<div id="docs-bottom-navigation', text, re.S)
    text = re.sub(r"<(style|script)\b.*?</\1>", " ", body.group(1) if body else text, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    return len(re.sub(r"\s+", " ", html.unescape(text)))


def distractor_pages(html_root: Path):
    """Every distractor page in the scaled sets' order."""
    for section in PYTHON_SECTIONS:
        for page in sorted((html_root / section).glob("*.html")):
            if page.name != "index.html":
                yield f"{section}-{page.name}", page
    postgres = fetch_package("postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html/index.html")
    for page in sorted((postgres / "usr/share/doc/postgresql-doc-15/html").glob("*.html")):
        yield f"postgresql-{page.name}", page
    for package, name, folder in (("python-django-doc", "django", "html"),
                                  ("python-sqlalchemy-doc", "sqlalchemy", "html"),
                                  ("git-doc", "git", "")):
        root = fetch_package(package, f"usr/share/doc/{package}/{folder}/index.html") / \
            f"usr/share/doc/{package}/{folder}"
        for page in sorted(root.rglob("*.html")):
            relative = page.relative_to(root)
            # Generated indexes, module sources and search pages are not prose.
            if relative.parts[0].startswith("_") or page.name in NOT_PROSE:
                continue
            yield f"{name}-{'-'.join(relative.parts)}", page


NOT_PROSE = {"genindex.html", "search.html", "py-modindex.html", "index.html", "contents.html"}


QUESTION = re.compile(
    r'(<section id="[^"]+">\s*<h3>)(.*?)(</h3>)', re.DOTALL)


def build_corpus(html_root: Path, out: Path, size=None):
    """Writes the FAQ pages with questions replaced by labels, and the distractor pages (the
    small set's, or enough for about `size` chunks). Returns [(label, question)]."""
    out.mkdir(parents=True, exist_ok=True)
    questions = []
    chars = 0
    for page in sorted(glob.glob(str(html_root / "faq/*.html"))):
        if page.endswith("index.html"):
            continue
        text = Path(page).read_text(encoding="utf-8")

        def relabel(match):
            question = html.unescape(re.sub(r"<[^>]+>", "", match.group(2)))
            question = question.replace("¶", "").strip()
            label = f"Entry {len(questions) + 1}"
            questions.append((label, question))
            return f"{match.group(1)}{label}{match.group(3)}"

        text = QUESTION.sub(relabel, text)
        # The page's own table of contents repeats every question: drop it.
        text = re.sub(r'<nav class="contents.*?</nav>', "", text, flags=re.DOTALL)
        text = re.sub(r'<div class="contents.*?</div>', "", text, flags=re.DOTALL)
        target = out / f"faq-{Path(page).name}"
        target.write_text(text, encoding="utf-8")
        chars += page_text_chars(target)
    if size is None:
        distractors = [(f"{Path(p).parent.name}-{Path(p).name}", Path(p)) for p in
                       sorted(glob.glob(str(html_root / "tutorial/*.html"))) +
                       sorted(glob.glob(str(html_root / "howto/*.html")))
                       if not p.endswith("index.html")]
    else:
        distractors = []
        for name, page in distractor_pages(html_root):
            if chars >= size * CHARS_PER_CHUNK:
                break
            distractors.append((name, page))
            chars += page_text_chars(page)
    for name, page in distractors:
        shutil.copy(page, out / name)
    return questions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, base: str):
        self.base = base
        self.token = None
        # Set by sign_in: a long run outlives an access token, so a 401 signs in again.
        self.credentials = None

    def sign_in(self, credentials):
        status, body = self.call("POST", "/api/v1/auth/login", credentials)
        if status == 200:
            self.credentials = credentials
            self.token = body["access_token"]
            self.signed_in_at = time.time()
        return status, body

    def fresh_token(self, seconds=300):
        """Signs in again when the token is older than `seconds` (before a long request that
        cannot be retried, such as a stream)."""
        if self.credentials and time.time() - self.signed_in_at > seconds:
            self.sign_in(self.credentials)

    def call(self, method, path, body=None, headers=None, raw=None):
        status, answer = self.send(method, path, body, headers, raw)
        if status == 401 and self.credentials and not path.startswith("/api/v1/auth/"):
            self.sign_in(self.credentials)
            status, answer = self.send(method, path, body, headers, raw)
        return status, answer

    def send(self, method, path, body=None, headers=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def upload(self, path: Path):
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return self.call("POST", "/api/v1/documents", raw=body,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def list_documents(api):
    status, page = api.call("GET", "/api/v1/documents?limit=100")
    assert status == 200, page
    documents = page["documents"]
    while page["total"] > len(documents):
        status, page = api.call("GET", f"/api/v1/documents?limit=100&offset={len(documents)}")
        assert status == 200, page
        documents += page["documents"]
    return documents


def first_relevant_rank(results, label):
    for rank, result in enumerate(results, 1):
        if label in result["heading_path"].split(" > "):
            return rank
    return None


def metrics(ranks):
    n = len(ranks)
    return {
        "hit@1": sum(1 for r in ranks if r == 1) / n,
        "hit@5": sum(1 for r in ranks if r and r <= 5) / n,
        "mrr@10": sum(1 / r for r in ranks if r and r <= 10) / n,
    }


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="",
                        help="comma-separated chunk counts of scaled sets [default: the small set]")
    parser.add_argument("--cache", action="store_true",
                        help="keep each ingested set under ~/.cache/companero/eval and reuse it")
    parser.add_argument("--chunk-tokens", type=int)
    parser.add_argument("--chunk-overlap", type=int)
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    parser.add_argument("--binary", default=f"{target}/release/companero")
    models = os.environ.get("COMPANERO_TEST_MODELS",
                            str(Path.home() / ".cache/companero/test-models"))
    parser.add_argument("--embedder", default=f"{models}/all-minilm-l6-v2")
    parser.add_argument("--weights", default="",
                        help="also fuse vector and lexical rankings offline with these lexical weights")
    parser.add_argument("--lexical-weight", type=float,
                        help="the server's --search-lexical-weight [default: its default]")
    parser.add_argument("--reuse", help="a data directory kept by an earlier --keep run: skip ingestion")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    return parser.parse_args()


def main():
    args = parse_args()
    html_root = fetch_manual()
    sizes = [int(x) for x in args.sizes.split(",") if x] or [None]
    for size in sizes:
        evaluate(args, html_root, size)


def work_directory(args, size):
    """Where this set's data lives, and whether it was ingested before."""
    if args.reuse:
        return Path(args.reuse), True
    if args.cache:
        key = "-".join(str(x) for x in (size or "small", args.chunk_tokens or "default",
                                       args.chunk_overlap if args.chunk_overlap is not None
                                       else "default", Path(args.embedder).name))
        work = CACHE / f"index-{key}"
        return work, (work / "ingested").exists()
    return Path(tempfile.mkdtemp(prefix="companero-eval-")), False


def evaluate(args, html_root, size):
    work, ingested = work_directory(args, size)
    corpus = work / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    questions = build_corpus(html_root, corpus, size)
    files = sorted(corpus.iterdir())
    port = free_port()
    command = [args.binary, "serve", "--setup-token", "setup_eval", "--data-dir", str(work / "data"), "--bind",
               f"127.0.0.1:{port}", "--embedder", args.embedder, "--offline", "--signup", "open",
               "--log-level", "warn", "--api-rate-limit", "1000000"]
    if args.chunk_tokens:
        command += ["--chunk-tokens", str(args.chunk_tokens)]
    if args.chunk_overlap is not None:
        command += ["--chunk-overlap", str(args.chunk_overlap)]
    if args.lexical_weight is not None:
        command += ["--search-lexical-weight", str(args.lexical_weight)]
    server = subprocess.Popen(command)
    try:
        api = Api(f"http://127.0.0.1:{port}")
        for _ in range(600):
            try:
                status, ready = api.call("GET", "/readyz")
                if ready["components"]["embedder"]["ready"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(0.1)
        credentials = {"email": "eval@example.com", "password": "violet tractor sings at noon"}
        # A cached set whose ingestion was interrupted resumes: its uploads are all in.
        uploaded = ingested or (args.cache and (work / "uploaded").exists())
        # A cached or seeded data directory has the account already.
        status, body = api.sign_in(credentials)
        if status != 200:
            status, body = api.call("POST", "/api/v1/auth/register",
                                    {**credentials, "full_name": "Eval", "setup_token": "setup_eval"})
            assert status == 201, body
            api.sign_in(credentials)

        started = time.time()
        # Pages already in (a seeding smaller set, or an interrupted upload) are not sent again.
        present = {d["filename"] for d in list_documents(api)} if not uploaded else set()
        for path in files if not uploaded else []:
            if path.name in present:
                continue
            status, body = api.upload(path)
            assert status == 202, (path, body)
        if args.cache:
            (work / "uploaded").touch()
        while True:
            documents = list_documents(api)
            pending = [d for d in documents if d["status"] in ("queued", "processing")]
            if not pending:
                break
            time.sleep(0.5)
        ingest_seconds = time.time() - started
        if args.cache:
            (work / "ingested").touch()
        failed = [d for d in documents if d["status"] == "failed"]
        chunks = sum(d["chunk_count"] for d in documents)
        ranks = {}
        latencies = {}
        rankings = {}
        for mode in ("lexical", "vector", "hybrid"):
            ranks[mode] = []
            latencies[mode] = []
            for label, question in questions:
                begun = time.perf_counter()
                status, body = api.call("POST", "/api/v1/search",
                                        {"query": question, "limit": 10 if mode == "hybrid" else 50,
                                         "mode": mode})
                latencies[mode].append((time.perf_counter() - begun) * 1000)
                assert status == 200, body
                rankings[(mode, label)] = body["results"]
                ranks[mode].append(first_relevant_rank(body["results"][:10], label))

        hybrid_texts = [r["text"] for (mode, _), results in rankings.items()
                        if mode == "hybrid" for r in results[:4]]
        passage_chars = statistics.mean(len(t) for t in hybrid_texts) if hybrid_texts else 0
        report = {
            "passage_chars": round(passage_chars),
            "size": size,
            "questions": len(questions),
            "documents": len(files),
            "failed_documents": [d["filename"] for d in failed],
            "chunks": chunks,
            "chunk_tokens": args.chunk_tokens,
            "chunk_overlap": args.chunk_overlap,
            "lexical_weight": args.lexical_weight,
            "ingest_seconds": None if ingested else round(ingest_seconds, 1),
            "chunks_per_second": None if ingested else round(chunks / ingest_seconds, 1),
            "modes": {mode: {**{k: round(v, 3) for k, v in metrics(ranks[mode]).items()},
                             "p50_ms": round(percentile(latencies[mode], 50), 1),
                             "p95_ms": round(percentile(latencies[mode], 95), 1)}
                      for mode in ranks},
        }
        # Offline fusion of the two single-method rankings (top 50 each), to choose the
        # weight: score = (cosine + w * bm25/max_bm25) / (1 + w); lexical-only candidates
        # get cosine 0 here (the server computes their true cosine, so it does at least as well).
        if args.weights:
            report["offline_fusion"] = {}
            for w in [float(x) for x in args.weights.split(",")]:
                fused_ranks = []
                for label, _ in questions:
                    dense = {r["chunk_id"]: (r["score"], r) for r in rankings[("vector", label)]}
                    lexical = {r["chunk_id"]: (r["score"], r) for r in rankings[("lexical", label)]}
                    best = max((s for s, _ in lexical.values()), default=0) or 1
                    scored = []
                    for cid in set(dense) | set(lexical):
                        d = dense.get(cid, (0, None))[0]
                        lex = lexical.get(cid, (0, None))[0] / best
                        result = (dense.get(cid) or lexical.get(cid))[1]
                        scored.append(((d + w * lex) / (1 + w), result))
                    scored.sort(key=lambda x: -x[0])
                    fused_ranks.append(first_relevant_rank([r for _, r in scored[:10]], label))
                report["offline_fusion"][str(w)] = {k: round(v, 3) for k, v in metrics(fused_ranks).items()}

        print(f"\nRetrieval on the Python FAQ, {'the small set' if size is None else f'scaled to {size}'} "
              f"({len(questions)} questions; {len(files)} documents, "
              f"{chunks} chunks; chunk_tokens={args.chunk_tokens or 'default'}, "
              f"overlap={args.chunk_overlap if args.chunk_overlap is not None else 'default'})")
        if not ingested:
            print(f"ingestion: {ingest_seconds:.1f} s, {chunks / ingest_seconds:.1f} chunks/s; "
                  f"failed: {report['failed_documents'] or 'none'}")
        print(f"average passage: {passage_chars:.0f} characters (a 4-passage prompt holds "
              f"about {4 * passage_chars / 4:.0f} tokens of passages)")
        print(f"lexical weight: {args.lexical_weight if args.lexical_weight is not None else 'default'}")
        print(f"{'mode':<10}{'hit@1':>8}{'hit@5':>8}{'MRR@10':>8}{'p50 ms':>9}{'p95 ms':>9}")
        for mode, m in report["modes"].items():
            print(f"{mode:<10}{m['hit@1']:>8.3f}{m['hit@5']:>8.3f}{m['mrr@10']:>8.3f}"
                  f"{m['p50_ms']:>9.1f}{m['p95_ms']:>9.1f}")
        for w, m in report.get("offline_fusion", {}).items():
            print(f"offline fusion w={w}: hit@1 {m['hit@1']:.3f} hit@5 {m['hit@5']:.3f} "
                  f"MRR@10 {m['mrr@10']:.3f}")
        if args.json:
            print(json.dumps(report))
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not (args.keep or args.cache or args.reuse):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
