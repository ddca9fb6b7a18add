//! Precompresses the web page's assets (src/api/web/assets) with gzip at build time, so the
//! daemon serves them with `Content-Encoding: gzip` to browsers that accept it without
//! compressing anything at run time. Uses the system's `gzip -9 -n` (no timestamp or name in the
//! header: the output depends only on the input). Without `gzip` on the build machine the files
//! are left empty and the assets are served uncompressed (a build warning says so).

use std::path::{Path, PathBuf};
use std::process::Command;

const ASSETS: [&str; 3] = ["app.js", "app.css", "icon.svg"];

fn main() {
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    for name in ASSETS {
        let src = Path::new("src/api/web/assets").join(name);
        println!("cargo:rerun-if-changed={}", src.display());
        let gz = Command::new("gzip")
            .args(["-9", "-n", "-c"])
            .arg(&src)
            .output();
        let bytes = match gz {
            Ok(o) if o.status.success() => o.stdout,
            _ => {
                println!("cargo:warning=gzip is not available: {name} is served uncompressed");
                Vec::new()
            }
        };
        // A new file renamed into place: a build directory whose files are shared (hard-linked
        // copies of `target/`) or read by a running build never sees a half-written or foreign
        // file through the old name.
        let dest = out.join(format!("{name}.gz"));
        let tmp = out.join(format!("{name}.gz.{}.tmp", std::process::id()));
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &dest)) {
            println!("cargo:warning=cannot write {name}.gz: {e}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
