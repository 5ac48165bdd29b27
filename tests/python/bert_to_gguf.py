"""Writes a sentence-transformers BERT embedder (the MiniLM test model) as a GGUF file that
llama.cpp's server can serve embeddings from, the way llama.cpp's convert_hf_to_gguf.py does
for BERT: the same tensor names, WordPiece vocabulary in "phantom space" form, mean pooling.

Standard library only (llama.cpp's converter needs torch): safetensors and GGUF are simple
containers, and the weights stay float32, so tensors are copied byte for byte.

    python3 bert_to_gguf.py MODEL_DIR OUT.gguf
"""

import json
import struct
import sys
from pathlib import Path

ALIGNMENT = 32
GGUF_UINT32, GGUF_INT32, GGUF_FLOAT32, GGUF_BOOL, GGUF_STRING, GGUF_ARRAY = 4, 5, 6, 7, 8, 9
GGML_F32 = 0
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL = 1, 2, 3
POOLING_MEAN = 1

LAYER_TENSORS = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
EMBEDDING_TENSORS = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.LayerNorm": "token_embd_norm",
}


def gguf_name(name):
    """llama.cpp's name for a Hugging Face BERT tensor, or None for ones it does not use."""
    name = name.removeprefix("bert.")
    stem, _, kind = name.rpartition(".")
    if stem in EMBEDDING_TENSORS:
        return f"{EMBEDDING_TENSORS[stem]}.{kind}"
    parts = stem.split(".")
    if parts[:2] == ["encoder", "layer"]:
        mapped = LAYER_TENSORS.get(".".join(parts[3:]))
        if mapped:
            return f"blk.{parts[2]}.{mapped}.{kind}"
    return None  # the pooler and position ids


def read_safetensors(path):
    data = path.read_bytes()
    (header_len,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + header_len])
    body = 8 + header_len
    tensors = []
    for name, info in header.items():
        if name == "__metadata__" or gguf_name(name) is None:
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{name} is {info['dtype']}; only float32 weights are copied")
        start, end = info["data_offsets"]
        tensors.append((name, info["shape"], data[body + start : body + end]))
    return tensors


def phantom(token):
    """convert_hf_to_gguf's WordPiece form: continuations lose ##, word starts gain ▁."""
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


class Writer:
    def __init__(self):
        self.kv = []

    @staticmethod
    def string(text):
        raw = text.encode("utf-8")
        return struct.pack("<Q", len(raw)) + raw

    def add(self, key, kind, value):
        body = self.string(key) + struct.pack("<I", kind)
        if kind == GGUF_STRING:
            body += self.string(value)
        elif kind == GGUF_UINT32:
            body += struct.pack("<I", value)
        elif kind == GGUF_FLOAT32:
            body += struct.pack("<f", value)
        elif kind == GGUF_BOOL:
            body += struct.pack("<?", value)
        else:
            raise ValueError(kind)
        self.kv.append(body)

    def add_array(self, key, kind, values):
        body = self.string(key) + struct.pack("<IIQ", GGUF_ARRAY, kind, len(values))
        if kind == GGUF_STRING:
            body += b"".join(self.string(v) for v in values)
        elif kind == GGUF_INT32:
            body += struct.pack(f"<{len(values)}i", *values)
        else:
            raise ValueError(kind)
        self.kv.append(body)


def main(model_dir, out):
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    specials = {"[PAD]", "[CLS]", "[SEP]", "[MASK]"}

    w = Writer()
    w.add("general.architecture", GGUF_STRING, "bert")
    w.add("general.name", GGUF_STRING, model_dir.name)
    w.add("general.file_type", GGUF_UINT32, 0)
    w.add("general.alignment", GGUF_UINT32, ALIGNMENT)
    w.add("bert.context_length", GGUF_UINT32, config["max_position_embeddings"])
    w.add("bert.embedding_length", GGUF_UINT32, config["hidden_size"])
    w.add("bert.feed_forward_length", GGUF_UINT32, config["intermediate_size"])
    w.add("bert.block_count", GGUF_UINT32, config["num_hidden_layers"])
    w.add("bert.attention.head_count", GGUF_UINT32, config["num_attention_heads"])
    w.add("bert.attention.layer_norm_epsilon", GGUF_FLOAT32, config.get("layer_norm_eps", 1e-12))
    w.add("bert.attention.causal", GGUF_BOOL, False)
    w.add("bert.pooling_type", GGUF_UINT32, POOLING_MEAN)
    w.add("tokenizer.ggml.model", GGUF_STRING, "bert")
    w.add("tokenizer.ggml.pre", GGUF_STRING, "default")
    w.add_array("tokenizer.ggml.tokens", GGUF_STRING, [phantom(t) for t in vocab])
    w.add_array(
        "tokenizer.ggml.token_type",
        GGUF_INT32,
        [
            TOKEN_CONTROL if t in specials else TOKEN_UNKNOWN if t == "[UNK]" else TOKEN_NORMAL
            for t in vocab
        ],
    )
    w.add("tokenizer.ggml.token_type_count", GGUF_UINT32, config.get("type_vocab_size", 2))
    for key, token in [
        ("bos_token_id", "[CLS]"),
        ("cls_token_id", "[CLS]"),
        ("seperator_token_id", "[SEP]"),
        ("padding_token_id", "[PAD]"),
        ("unknown_token_id", "[UNK]"),
        ("mask_token_id", "[MASK]"),
    ]:
        w.add(f"tokenizer.ggml.{key}", GGUF_UINT32, vocab.index(token))
    w.add("tokenizer.ggml.add_bos_token", GGUF_BOOL, True)
    w.add("tokenizer.ggml.add_sep_token", GGUF_BOOL, True)
    w.add("tokenizer.ggml.add_eos_token", GGUF_BOOL, False)

    tensors = [
        (gguf_name(name), shape, raw)
        for name, shape, raw in read_safetensors(model_dir / "model.safetensors")
    ]
    infos, offset = [], 0
    for name, shape, raw in tensors:
        # GGUF lists dimensions innermost first.
        dims = list(reversed(shape))
        infos.append(
            Writer.string(name)
            + struct.pack("<I", len(dims))
            + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<IQ", GGML_F32, offset)
        )
        offset += len(raw) + (-len(raw)) % ALIGNMENT

    with open(out, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(w.kv)))
        for body in w.kv + infos:
            f.write(body)
        f.write(b"\0" * ((-f.tell()) % ALIGNMENT))
        for _, _, raw in tensors:
            f.write(raw)
            f.write(b"\0" * ((-len(raw)) % ALIGNMENT))


if __name__ == "__main__":
    main(*sys.argv[1:3])
