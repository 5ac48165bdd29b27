//! Build-time work: precompress the web assets and record the commit the binary is built from.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Text formats worth compressing; images and fonts are compressed already.
const COMPRESSIBLE: [&str; 11] = [
    "html",
    "css",
    "js",
    "mjs",
    "json",
    "svg",
    "txt",
    "map",
    "xml",
    "wasm",
    "webmanifest",
];

fn main() {
    println!("cargo:rerun-if-changed=web");
    // rust-embed does not notice new files by itself; re-running this script makes it look again.
    println!("cargo:rerun-if-changed=migrations");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let web_out = out_dir.join("web");
    if web_out.exists() {
        fs::remove_dir_all(&web_out).expect("clean previous assets");
    }
    copy_and_precompress(Path::new("web"), &web_out);

    println!("cargo:rustc-env=COMPANERO_GIT_COMMIT={}", git_commit());
}

fn copy_and_precompress(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create asset output folder");
    for entry in fs::read_dir(from).expect("read web/") {
        let path = entry.expect("read web/ entry").path();
        let target = to.join(path.file_name().expect("entry has a name"));
        if path.is_dir() {
            copy_and_precompress(&path, &target);
            continue;
        }
        let bytes = fs::read(&path).expect("read asset");
        fs::write(&target, &bytes).expect("write asset");
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !COMPRESSIBLE.contains(&extension) {
            continue;
        }
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        write_if_smaller(
            &target.with_file_name(format!("{name}.br")),
            &brotli(&bytes),
            bytes.len(),
        );
        write_if_smaller(
            &target.with_file_name(format!("{name}.gz")),
            &gzip(&bytes),
            bytes.len(),
        );
    }
}

/// A compressed variant is kept only when it saves at least a tenth.
fn write_if_smaller(path: &Path, compressed: &[u8], original_len: usize) {
    if compressed.len() * 10 < original_len * 9 {
        fs::write(path, compressed).expect("write compressed asset");
    }
}

fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut out, 4096, 11, 22);
        writer.write_all(bytes).expect("brotli");
    }
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// The short commit hash, or "unknown" outside a git checkout (a source tarball).
fn git_commit() -> String {
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
