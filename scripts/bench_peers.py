"""The peers' half of scripts/bench-compare: llama.cpp and sentence-transformers, measured with
the same definitions as `companero bench llm | embed` (see src/bench/mod.rs). Prints one JSON
object. Runs inside the bench-compare virtual environment."""

import argparse
import json
import time


def bench_llm(path, prompt, max_tokens, threads):
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    started = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads,
        n_batch=512, verbose=False,
    )
    load_s = time.perf_counter() - started

    def token_text(token):
        return llm.detokenize([token], special=True).decode("utf-8", "replace")

    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=token_text(llm.token_eos()),
        bos_token=token_text(llm.token_bos()),
    )
    rendered = formatter(messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": prompt},
    ]).prompt
    tokens = llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True)

    def is_end(token):
        try:
            return llama_cpp.llama_vocab_is_eog(llm._model.vocab, token)
        except AttributeError:
            return token == llm.token_eos()

    output = []
    times = []
    start = time.perf_counter()
    for token in llm.generate(tokens, temp=0.0, repeat_penalty=1.1, reset=True):
        times.append(time.perf_counter())
        if is_end(token):
            break
        output.append(token)
        if len(times) >= max_tokens:
            break
    ttft = times[0] - start
    gen_tokens = len(times) - 1
    return {
        "version": llama_cpp.__version__,
        "load_s": load_s,
        "prompt_tokens": len(tokens),
        "ttft_s": ttft,
        "prefill_tok_s": len(tokens) / ttft,
        "gen_tokens": gen_tokens,
        "gen_tok_s": gen_tokens / (times[-1] - times[0]) if gen_tokens else 0.0,
        "output": llm.detokenize(output).decode("utf-8", "replace"),
    }


def windows(text, count, words):
    all_words = text.split()
    return [
        " ".join(all_words[(i * words + k) % len(all_words)] for k in range(words))
        for i in range(count)
    ]


def bench_embed(path, text, threads):
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = 256
    chunks = windows(text, 96, 200)
    model.encode(chunks[:32], batch_size=32)

    def rate(batch):
        started = time.perf_counter()
        model.encode(chunks, batch_size=batch)
        return len(chunks) / (time.perf_counter() - started)

    return {
        "version": sentence_transformers.__version__,
        "torch": torch.__version__,
        "chunks_per_s_batch1": rate(1),
        "chunks_per_s_batch32": rate(32),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--llm", required=True)
    parser.add_argument("--embedder", required=True)
    parser.add_argument("--prompt-file", required=True)
    parser.add_argument("--text-file", required=True)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    prompt = open(args.prompt_file).read()
    text = open(args.text_file).read()
    print(json.dumps({
        "llm": bench_llm(args.llm, prompt, args.max_tokens, args.threads),
        "embed": bench_embed(args.embedder, text, args.threads),
    }))


if __name__ == "__main__":
    main()
