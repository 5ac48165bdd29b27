//! What a GGUF file says about itself: architecture, context length, tokenizer and chat template.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use super::InferenceError;

/// The chat architectures Compañero can run, as GGUF's `general.architecture` names them.
pub const SUPPORTED_ARCHITECTURES: [&str; 5] = ["llama", "qwen2", "qwen3", "gemma3", "phi3"];

/// A GGUF file's header, read once and kept beside the weights.
pub struct GgufFile {
    pub content: Content,
    pub reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, InferenceError> {
        let file = File::open(path).map_err(|e| {
            InferenceError::Load(format!("cannot open model {}: {e}", path.display()))
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            InferenceError::Load(format!("{} is not a GGUF model: {e}", path.display()))
        })?;
        Ok(GgufFile { content, reader })
    }

    pub fn metadata(&self) -> Metadata<'_> {
        Metadata(&self.content.metadata)
    }
}

/// Typed access to GGUF metadata.
#[derive(Clone, Copy)]
pub struct Metadata<'a>(pub &'a HashMap<String, Value>);

impl<'a> Metadata<'a> {
    pub fn string(&self, key: &str) -> Option<&'a str> {
        self.0
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    pub fn u32(&self, key: &str) -> Option<u32> {
        self.0.get(key).and_then(|v| match v {
            Value::U8(x) => Some(u32::from(*x)),
            Value::U16(x) => Some(u32::from(*x)),
            Value::U32(x) => Some(*x),
            Value::I32(x) => u32::try_from(*x).ok(),
            Value::U64(x) => u32::try_from(*x).ok(),
            Value::I64(x) => u32::try_from(*x).ok(),
            _ => None,
        })
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.0.get(key).and_then(|v| v.to_bool().ok())
    }

    pub fn strings(&self, key: &str) -> Option<Vec<&'a str>> {
        let values = self.0.get(key)?.to_vec().ok()?;
        values
            .iter()
            .map(|v| v.to_string().ok().map(String::as_str))
            .collect()
    }

    pub fn i32s(&self, key: &str) -> Option<Vec<i32>> {
        let values = self.0.get(key)?.to_vec().ok()?;
        values.iter().map(|v| v.to_i32().ok()).collect()
    }

    pub fn f32s(&self, key: &str) -> Option<Vec<f32>> {
        let values = self.0.get(key)?.to_vec().ok()?;
        values.iter().map(|v| v.to_f32().ok()).collect()
    }

    /// `general.architecture`, checked against what we support.
    pub fn architecture(&self) -> Result<&'a str, InferenceError> {
        let architecture = self
            .string("general.architecture")
            .ok_or_else(|| InferenceError::Load("GGUF has no general.architecture".into()))?;
        if SUPPORTED_ARCHITECTURES.contains(&architecture) {
            Ok(architecture)
        } else {
            Err(InferenceError::Unsupported(format!(
                "model architecture '{architecture}' is not supported; supported: {}",
                SUPPORTED_ARCHITECTURES.join(", ")
            )))
        }
    }

    /// The context length the model was trained for.
    pub fn context_length(&self, architecture: &str) -> Option<usize> {
        self.u32(&format!("{architecture}.context_length"))
            .map(|n| n as usize)
    }

    pub fn name(&self) -> Option<&'a str> {
        self.string("general.name")
    }
}
