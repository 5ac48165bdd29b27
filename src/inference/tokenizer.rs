//! Tokenizers for chat models: `tokenizer.json` beside the model when there is one, otherwise
//! rebuilt from the GGUF metadata, so that a single GGUF file is enough to chat.
//!
//! GGUF byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`) name their pre-tokenizer in
//! `tokenizer.ggml.pre`; each maps to the split rules its original `tokenizer.json` used.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::InferenceError;
use super::gguf::Metadata;

/// Llama 3 (`llama-bpe`): numbers in groups of up to three digits.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 and Qwen3: like Llama 3 but every digit on its own.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A tokenizer and the special ids generation needs.
pub struct ChatTokenizer {
    pub inner: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Whether prompts must start with the BOS token (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
}

impl ChatTokenizer {
    /// Encodes a rendered prompt; special tokens written in the text (`<|im_start|>`) become
    /// their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if let Some(bos) = self.bos_id
            && self.add_bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Decodes ids to text, leaving out control tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, InferenceError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// Loads `tokenizer.json` from beside `model_path` if present, else rebuilds from metadata.
pub fn load(model_path: &Path, metadata: Metadata<'_>) -> Result<ChatTokenizer, InferenceError> {
    let beside = model_path.with_file_name("tokenizer.json");
    let inner = if beside.is_file() {
        Tokenizer::from_file(&beside).map_err(|e| {
            InferenceError::Tokenizer(format!("cannot read {}: {e}", beside.display()))
        })?
    } else {
        from_gguf(metadata)?
    };
    let id = |key: &str| metadata.u32(key);
    Ok(ChatTokenizer {
        inner,
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        add_bos: metadata.bool("tokenizer.ggml.add_bos_token").unwrap_or(
            // SentencePiece-style vocabularies expect BOS unless told otherwise.
            metadata.string("tokenizer.ggml.model") == Some("llama"),
        ),
    })
}

/// Rebuilds a `tokenizers` tokenizer from the vocabulary stored in a GGUF file.
pub fn from_gguf(metadata: Metadata<'_>) -> Result<Tokenizer, InferenceError> {
    let model = metadata.string("tokenizer.ggml.model").unwrap_or("");
    match model {
        "gpt2" => byte_level_from_gguf(metadata),
        "llama" => sentencepiece_from_gguf(metadata),
        other => Err(InferenceError::Unsupported(format!(
            "the GGUF vocabulary type '{other}' cannot be rebuilt (byte-level BPE 'gpt2' and \
             SentencePiece 'llama' can); put the model's tokenizer.json beside the GGUF file"
        ))),
    }
}

/// SentencePiece BPE vocabularies (Llama 2, TinyLlama, Mistral): pieces with scores, `▁` for
/// spaces, bytes as `<0xNN>` pieces for anything else. Rebuilt the way Hugging Face converts
/// them: the merges are every split of a piece into two pieces, ranked by the piece's score.
fn sentencepiece_from_gguf(metadata: Metadata<'_>) -> Result<Tokenizer, InferenceError> {
    use tokenizers::decoders::DecoderWrapper;
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as Normalizers};

    let missing = |key: &str| InferenceError::Tokenizer(format!("GGUF metadata lacks {key}"));
    let tokens = metadata
        .strings("tokenizer.ggml.tokens")
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    let scores = metadata
        .f32s("tokenizer.ggml.scores")
        .ok_or_else(|| missing("tokenizer.ggml.scores"))?;
    let token_types = metadata
        .i32s("tokenizer.ggml.token_type")
        .unwrap_or_default();
    let kind = |id: usize| token_types.get(id).copied().unwrap_or(TOKEN_TYPE_NORMAL);

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), id as u32))
        .collect();
    let mut ranked: Vec<(f32, usize, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if kind(id) != TOKEN_TYPE_NORMAL {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                let score = scores.get(id).copied().unwrap_or(f32::MIN);
                ranked.push((score, id, left.to_string(), right.to_string()));
            }
        }
    }
    // Higher score merges first; ties in vocabulary order.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges = ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect();
    let unknown = metadata
        .u32("tokenizer.ggml.unknown_token_id")
        .and_then(|id| tokens.get(id as usize))
        .map_or_else(|| "<unk>".to_string(), |t| t.to_string());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true)
        .unk_token(unknown)
        .build()
        .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| InferenceError::Tokenizer(e.to_string()))
    };
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if metadata
        .bool("tokenizer.ggml.add_space_prefix")
        .unwrap_or(true)
    {
        normalizers.push(Prepend::new("▁".into()).into());
    }
    normalizers.push(replace(" ", "▁")?.into());
    tokenizer
        .with_normalizer(Some(Normalizers::new(normalizers)))
        .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
    let decoders: Vec<DecoderWrapper> = vec![
        replace("▁", " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', 1, 0).into(),
    ];
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    add_control_tokens(&mut tokenizer, &tokens, &token_types)?;
    Ok(tokenizer)
}

fn add_control_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[&str],
    token_types: &[i32],
) -> Result<(), InferenceError> {
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(
            token_types
                .iter()
                .copied()
                .chain(std::iter::repeat(TOKEN_TYPE_NORMAL)),
        )
        .filter(|(_, kind)| *kind == TOKEN_TYPE_CONTROL || *kind == TOKEN_TYPE_USER_DEFINED)
        .map(|(token, kind)| AddedToken::from(token.to_string(), kind == TOKEN_TYPE_CONTROL))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
    Ok(())
}

/// Byte-level BPE vocabularies (GPT-2 style: Llama 3, Qwen, SmolLM).
fn byte_level_from_gguf(metadata: Metadata<'_>) -> Result<Tokenizer, InferenceError> {
    let missing = |key: &str| InferenceError::Tokenizer(format!("GGUF metadata lacks {key}"));
    let tokens = metadata
        .strings("tokenizer.ggml.tokens")
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    let merges = metadata
        .strings("tokenizer.ggml.merges")
        .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
    let token_types = metadata
        .i32s("tokenizer.ggml.token_type")
        .unwrap_or_default();

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), id as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| InferenceError::Tokenizer(format!("malformed merge '{merge}'")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pre = metadata.string("tokenizer.ggml.pre").unwrap_or("default");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        // Llama 3's tokenizer.json sets ignore_merges: whole words in the vocabulary win.
        .ignore_merges(pre == "llama-bpe")
        .build()
        .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    add_control_tokens(&mut tokenizer, &tokens, &token_types)?;
    Ok(tokenizer)
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, InferenceError> {
    let byte_level_with_regex = ByteLevel::new(false, true, true);
    let byte_level_only = ByteLevel::new(false, true, false);
    let split = |pattern: &str| {
        Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| InferenceError::Tokenizer(e.to_string()))
    };
    Ok(match pre {
        // SmolLM and StarCoder: each digit alone, then GPT-2's rules.
        "smollm" | "starcoder" | "refact" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level_with_regex.into()]).into()
        }
        "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" => {
            Sequence::new(vec![split(LLAMA3_PATTERN)?.into(), byte_level_only.into()]).into()
        }
        "qwen2" | "qwen35" | "deepseek-r1-qwen" => {
            Sequence::new(vec![split(QWEN2_PATTERN)?.into(), byte_level_only.into()]).into()
        }
        "gpt-2" | "gpt2" | "default" => byte_level_with_regex.into(),
        other => {
            tracing::warn!(
                pre = other,
                "unknown GGUF pre-tokenizer; using GPT-2's rules, which may split some text \
                 differently from the original"
            );
            byte_level_with_regex.into()
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::quantized::gguf_file::Value;

    use super::*;

    /// A small SentencePiece vocabulary laid out like Llama 2's: <unk>, <s>, </s>, 256 byte
    /// pieces, then merged pieces whose scores fall with their id.
    fn sentencepiece_metadata() -> HashMap<String, Value> {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for byte in 0..=255u8 {
            tokens.push(format!("<0x{byte:02X}>"));
            types.push(6);
        }
        for piece in [
            "▁", "h", "e", "l", "o", "w", "r", "d", "ll", "▁h", "or", "▁w", "▁he", "llo", "ld",
            "▁hello", "▁wor", "▁world", "!",
        ] {
            tokens.push(piece.into());
            types.push(1);
        }
        let scores: Vec<Value> = (0..tokens.len()).map(|i| Value::F32(-(i as f32))).collect();
        HashMap::from([
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("llama".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.scores".to_string(), Value::Array(scores)),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)),
        ])
    }

    #[test]
    fn sentencepiece_vocabularies_merge_by_score_and_fall_back_to_bytes() {
        let metadata = sentencepiece_metadata();
        let tokenizer = from_gguf(Metadata(&metadata)).unwrap();
        let encoding = tokenizer.encode("hello world!", false).unwrap();
        assert_eq!(encoding.get_tokens(), ["▁hello", "▁world", "!"]);

        // Characters outside the vocabulary travel as their UTF-8 bytes and come back intact.
        for text in ["hello ñ world", "héllo  wörld", " two spaces  inside "] {
            let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
            assert!(!ids.contains(&0), "no <unk> for {text:?}: {ids:?}");
            let decoded = tokenizer.decode(&ids, false).unwrap();
            assert_eq!(decoded, text, "{ids:?}");
        }
        let with_control = tokenizer.encode("<s>hello</s>", false).unwrap();
        let ids = with_control.get_ids();
        assert_eq!(
            (ids[0], ids[ids.len() - 1]),
            (1, 2),
            "control tokens in text are single ids"
        );
        assert_eq!(
            tokenizer.decode(ids, true).unwrap(),
            "hello",
            "and are left out of text"
        );
    }
}
