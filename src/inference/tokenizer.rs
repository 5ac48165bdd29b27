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
    if model != "gpt2" {
        return Err(InferenceError::Unsupported(format!(
            "the GGUF vocabulary type '{model}' cannot be rebuilt yet (byte-level BPE, 'gpt2', \
             can); put the model's tokenizer.json beside the GGUF file"
        )));
    }
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

    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(token_types.iter().copied().chain(std::iter::repeat(1)))
        .filter(|(_, kind)| *kind == TOKEN_TYPE_CONTROL || *kind == TOKEN_TYPE_USER_DEFINED)
        .map(|(token, kind)| AddedToken::from(token.to_string(), kind == TOKEN_TYPE_CONTROL))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
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
